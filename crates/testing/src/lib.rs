//! Real servers for the shared engine's tests: a private PostgreSQL 15
//! and a private SeaweedFS (S3 on loopback), each in a temporary
//! directory on free ports, installed by `scripts/services` when missing.
//!
//! [`Services::shared`] starts one pair per test process, on first use;
//! [`Services::start`] starts a pair of one's own, for tests that kill
//! and restart a server. Servers are children of a thread that lives as
//! long as the process, and get SIGKILL when it ends (`PR_SET_PDEATHSIG`),
//! so nothing outlives the tests. A server that cannot start fails the
//! test that needed it, saying why: nothing is skipped.
//!
//! [`layers`] checks that a crate's modules import one another in layers.

pub mod layers;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Where PostgreSQL 15's programs are on Debian.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The bucket every test root's objects go in (each under its own prefix).
pub const BUCKET: &str = "theater";

/// S3 credentials: SeaweedFS then refuses unsigned requests.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_key: String,
}

/// A running PostgreSQL and SeaweedFS pair.
pub struct Services {
    dir: tempfile::TempDir,
    /// `None`: anonymous S3 access (SeaweedFS's default).
    credentials: Option<Credentials>,
    pg_port: u16,
    s3_port: u16,
    /// SeaweedFS's other ports, kept so that a restart finds its data.
    weed_ports: Vec<(&'static str, u16)>,
    postgres: Mutex<Option<u32>>,
    weed: Mutex<Option<u32>>,
}

impl Services {
    /// The pair this test process shares, started on first use.
    pub fn shared() -> &'static Services {
        SHARED.get_or_init(|| {
            let services = Services::start();
            // Statics are never dropped: stop the servers and remove their
            // data when the test process exits.
            // SAFETY: registering a plain function with no captured state.
            unsafe { libc::atexit(stop_shared) };
            services
        })
    }

    /// A pair of one's own (for tests that stop and restart servers).
    pub fn start() -> Services {
        Services::start_with(None)
    }

    /// A pair of one's own whose S3 accepts only requests signed with
    /// `credentials`, when given.
    pub fn start_with(credentials: Option<Credentials>) -> Services {
        install();
        let dir = tempfile::Builder::new()
            .prefix("theater-services-")
            .tempdir()
            .expect("creating a directory for test servers");
        let weed_base = free_weed_ports();
        let services = Services {
            pg_port: free_port(),
            s3_port: weed_base,
            weed_ports: vec![
                ("master.port", weed_base + 1),
                ("volume.port", weed_base + 2),
                ("filer.port", weed_base + 3),
                ("admin.port", weed_base + 4),
            ],
            dir,
            credentials,
            postgres: Mutex::new(None),
            weed: Mutex::new(None),
        };
        report_on_panic(services.dir.path());
        services.init_postgres();
        services.start_postgres();
        services.start_weed();
        services.create_bucket();
        services
    }

    /// Sets the `AWS_*` variables the object store reads to this pair's
    /// endpoint (anonymous access). Every test root uses the same ones.
    pub fn configure_environment(&self) {
        // SAFETY: set before any root opens; all tests set the same values.
        unsafe {
            std::env::set_var("AWS_ENDPOINT_URL", self.s3_endpoint());
            std::env::set_var("AWS_ALLOW_HTTP", "true");
            std::env::set_var("AWS_REGION", "us-east-1");
            std::env::remove_var("AWS_ACCESS_KEY_ID");
            std::env::remove_var("AWS_SECRET_ACCESS_KEY");
        }
    }

    /// `http://127.0.0.1:PORT`, the S3 endpoint.
    pub fn s3_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// The PostgreSQL port.
    pub fn postgres_port(&self) -> u16 {
        self.pg_port
    }

    /// A root string for a fresh, empty root: a new database and a new
    /// prefix in the bucket, with its read cache in `cache`.
    pub fn new_root(&self, cache: &Path) -> String {
        self.new_database_root(cache).0
    }

    /// [`Services::new_root`], with the name of its database, for tests
    /// that look at (or tamper with) the database through [`Services::psql`].
    pub fn new_database_root(&self, cache: &Path) -> (String, String) {
        let name = format!("t{}", uuid::Uuid::new_v4().simple());
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        (self.root_string(&name, &name, cache), name)
    }

    /// The root string of database `database` and prefix `prefix`.
    pub fn root_string(&self, database: &str, prefix: &str, cache: &Path) -> String {
        format!(
            "postgres://theater@127.0.0.1:{}/{database}?objects=s3://{BUCKET}/{prefix}&cache={}",
            self.pg_port,
            cache.display()
        )
    }

    /// Runs SQL through `psql`, panicking with its output on failure.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let output = Command::new(format!("{PG_BIN}/psql"))
            .args(["-h", "127.0.0.1", "-p", &self.pg_port.to_string()])
            .args([
                "-U",
                "theater",
                "-d",
                database,
                "-tA",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .expect("running psql");
        assert!(
            output.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Kills PostgreSQL with SIGKILL.
    pub fn kill_postgres(&self) {
        kill(&self.postgres);
    }

    /// Starts PostgreSQL again (after [`Services::kill_postgres`]).
    pub fn restart_postgres(&self) {
        self.start_postgres();
    }

    /// Kills SeaweedFS with SIGKILL.
    pub fn kill_s3(&self) {
        kill(&self.weed);
    }

    /// Starts SeaweedFS again on the same port and data.
    pub fn restart_s3(&self) {
        self.start_weed();
    }

    fn pg_dir(&self) -> PathBuf {
        self.dir.path().join("pg")
    }

    fn init_postgres(&self) {
        let dir = self.pg_dir();
        std::fs::create_dir_all(&dir).expect("creating the PostgreSQL directory");
        if is_root() {
            run(Command::new("chown").args(["-R", "postgres:"]).arg(&dir));
            // The server must be able to reach its directory.
            run(Command::new("chmod").args(["755"]).arg(self.dir.path()));
        }
        let mut initdb = as_postgres(&format!("{PG_BIN}/initdb"));
        initdb
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-A", "trust", "-U", "theater", "--no-sync"]);
        run(&mut initdb);
    }

    fn start_postgres(&self) {
        let dir = self.pg_dir();
        let mut postgres = as_postgres(&format!("{PG_BIN}/postgres"));
        postgres
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-p", &self.pg_port.to_string(), "-k"])
            .arg(&dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=on"])
            .args(["-c", "max_connections=300"]);
        let log = std::fs::File::create(dir.join("log")).expect("creating the PostgreSQL log");
        postgres.stdout(Stdio::null()).stderr(log);
        *self.postgres.lock().unwrap() = Some(spawn_for_life(postgres));
        self.wait_until(self.pg_port, "PostgreSQL", &dir.join("log"));
        // Accepting connections is not the same as being ready after a crash.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(format!("{PG_BIN}/pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.pg_port.to_string()])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "PostgreSQL never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn start_weed(&self) {
        let dir = self.dir.path().join("weed");
        std::fs::create_dir_all(&dir).expect("creating the SeaweedFS directory");
        let mut weed = Command::new(weed_binary());
        weed.current_dir(&dir)
            // Its own log files here too, not in /tmp, removed with the rest.
            .arg(format!("-logdir={}", dir.display()))
            .arg("mini")
            .arg(format!("-dir={}", dir.display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
            ])
            // Services it would start on fixed ports (Lance on 9101), which
            // a second instance would find taken: off.
            .args(["-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0"])
            .arg("-s3.port.lance=0")
            // Fixed volume settings, so that its capacity does not depend on
            // how much free disk it sees at start (the default).
            .args(["-master.volumeSizeLimitMB=64", "-volume.max=100"])
            .arg(format!("-s3.port={}", self.s3_port));
        // Every other port explicitly, so servers never collide; SeaweedFS
        // puts each one's gRPC at the port + 10000.
        for (flag, port) in &self.weed_ports {
            weed.arg(format!("-{flag}={port}"));
        }
        if let Some(credentials) = &self.credentials {
            let config = dir.join("s3.json");
            std::fs::write(&config, s3_config(credentials)).expect("writing the S3 config");
            weed.arg(format!("-s3.config={}", config.display()));
        }
        let log = std::fs::File::create(dir.join("log")).expect("creating the SeaweedFS log");
        weed.stdout(log.try_clone().expect("log")).stderr(log);
        *self.weed.lock().unwrap() = Some(spawn_for_life(weed));
        self.wait_until(self.s3_port, "SeaweedFS", &dir.join("log"));
    }

    /// Creates the bucket (S3 `PUT /bucket`), retrying while SeaweedFS
    /// finishes starting.
    fn create_bucket(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut curl = Command::new("curl");
            curl.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT"]);
            if let Some(credentials) = &self.credentials {
                curl.args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
                    .arg(format!(
                        "{}:{}",
                        credentials.access_key, credentials.secret_key
                    ));
            }
            let created = curl
                .arg(format!("{}/{BUCKET}", self.s3_endpoint()))
                .output()
                .map(|output| String::from_utf8_lossy(&output.stdout).into_owned());
            if matches!(created.as_deref(), Ok("200") | Ok("409")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "SeaweedFS did not create bucket {BUCKET}: {created:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_until(&self, port: u16, what: &str, log: &Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!("{what} did not start on port {port}; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Adds to the panic hook, once per services directory: when a test
/// fails, the tail of each server's log and the free disk space are
/// printed with it, so a failure in CI shows what the servers saw.
fn report_on_panic(dir: &Path) {
    static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    static HOOKED: OnceLock<()> = OnceLock::new();
    DIRS.lock().unwrap().push(dir.to_owned());
    HOOKED.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            let dirs = DIRS.lock().map(|dirs| dirs.clone()).unwrap_or_default();
            // Pairs already stopped and removed have nothing to show.
            for dir in dirs.iter().filter(|dir| dir.exists()) {
                for log in [dir.join("pg/log"), dir.join("weed/log")] {
                    eprintln!("--- last lines of {}:\n{}", log.display(), tail(&log, 30));
                }
                let free = Command::new("df")
                    .args(["-h"])
                    .arg(dir)
                    .output()
                    .map(|out| String::from_utf8_lossy(&out.stdout).into_owned());
                eprintln!("--- free disk:\n{}", free.unwrap_or_default());
            }
        }));
    });
}

/// SeaweedFS's S3 identities: one, allowed everything, with `credentials`.
fn s3_config(credentials: &Credentials) -> String {
    format!(
        r#"{{"identities":[{{"name":"theater","credentials":[{{"accessKey":"{}","secretKey":"{}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#,
        credentials.access_key, credentials.secret_key
    )
}

/// The last `lines` lines of a file (empty when it cannot be read).
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The pair this process shares (see [`Services::shared`]).
static SHARED: OnceLock<Services> = OnceLock::new();

extern "C" fn stop_shared() {
    if let Some(services) = SHARED.get() {
        kill(&services.postgres);
        kill(&services.weed);
        let _ = std::fs::remove_dir_all(services.dir.path());
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        kill(&self.postgres);
        kill(&self.weed);
    }
}

/// Installs the servers when missing (`scripts/services install`).
fn install() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let status = Command::new("bash")
            .arg(scripts_dir().join("services"))
            .arg("install")
            .status()
            .expect("running scripts/services install");
        assert!(status.success(), "scripts/services install failed");
    });
}

fn weed_binary() -> PathBuf {
    let output = Command::new("bash")
        .arg(scripts_dir().join("services"))
        .arg("weed")
        .output()
        .expect("running scripts/services weed");
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts")
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

/// A command run as the `postgres` user when we are root (PostgreSQL
/// refuses to run as root); `setpriv` execs, so the child is the server.
fn as_postgres(program: &str) -> Command {
    if is_root() {
        let mut command = Command::new("setpriv");
        command.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
            program,
        ]);
        command
    } else {
        Command::new(program)
    }
}

fn run(command: &mut Command) {
    let output = command.output().expect("starting a setup command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A command to start, and where to send its process id.
type SpawnRequest = (Command, mpsc::Sender<u32>);

/// Spawns `command` from a thread that never ends, with SIGKILL as its
/// parent-death signal: it dies with the test process and not before.
fn spawn_for_life(command: Command) -> u32 {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("test-servers".into())
            .spawn(move || {
                let mut children: Vec<Child> = Vec::new();
                for (mut command, reply) in incoming {
                    // SAFETY: prctl is async-signal-safe.
                    unsafe {
                        command.pre_exec(|| {
                            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                            Ok(())
                        });
                    }
                    let child = command.spawn().expect("starting a test server");
                    let _ = reply.send(child.id());
                    children.push(child);
                    children.retain_mut(|child| child.try_wait().ok().flatten().is_none());
                }
                // Keep the thread (the children's parent) alive forever.
                loop {
                    std::thread::park();
                }
            })
            .expect("starting the test-servers thread");
        Mutex::new(requests)
    });
    let (reply, pid) = mpsc::channel();
    spawner
        .lock()
        .unwrap()
        .send((command, reply))
        .expect("test-servers thread");
    pid.recv().expect("test server pid")
}

fn kill(pid: &Mutex<Option<u32>>) {
    if let Some(pid) = pid.lock().unwrap().take() {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
        // Wait until the port is free of it (the process is gone).
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}/status")).exists()
            && std::fs::read_to_string(format!("/proc/{pid}/status"))
                .is_ok_and(|status| !status.contains("State:\tZ"))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Five consecutive ports for SeaweedFS (S3, master, volume, filer,
/// admin), free a moment ago with the five 10000 above them (where it puts
/// each one's gRPC service): none of the ten can be another's gRPC port.
///
/// All ten lie below the kernel's ephemeral range, so no outgoing
/// connection (to PostgreSQL, S3, or anything else on the machine) can be
/// handed one of them between this check and SeaweedFS binding it.
fn free_weed_ports() -> u16 {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let lowest = 10_000u16;
    // The highest base whose gRPC ports (base + 10_004) stay below the range.
    let highest = ephemeral_start
        .checked_sub(10_005)
        .filter(|highest| *highest > lowest)
        .expect("the ephemeral port range leaves no room for SeaweedFS's test ports");
    let mut seed = u64::from(std::process::id()) ^ uuid::Uuid::new_v4().as_u64_pair().0;
    loop {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let base = lowest + ((seed >> 33) % u64::from(highest - lowest)) as u16;
        let free = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
        if (0..5).all(|n| free(base + n) && free(base + n + 10_000)) {
            return base;
        }
    }
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("finding a free port")
}
