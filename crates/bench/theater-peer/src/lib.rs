//! See benches/theater_peer.rs.
