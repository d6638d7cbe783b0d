//! A fault-injecting TCP proxy for tests: cuts, stalls, delays, reorders and corrupts real connections.
