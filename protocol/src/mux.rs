//! The yamux settings both ends of the agent channel use.

use std::time::Duration;

/// The VM may be paused (its vCPUs stopped) and either side may stop reading
/// for any length of time: neither a keepalive nor a write timeout may end a
/// healthy session then.
pub fn yamux_config() -> tokio_yamux::Config {
    tokio_yamux::Config {
        enable_keepalive: false,
        connection_write_timeout: Duration::from_secs(24 * 3600),
        ..tokio_yamux::Config::default()
    }
}
