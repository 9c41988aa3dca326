//! The server's integration tests, one binary (link time dominates).

/// The JSON API against arbitrary bodies (proptest).
mod bodies;
/// The front door under abuse: reads that write nothing, limits that follow the client, the
/// queue's bounds, the proxy header, expiry.
mod front_door;
