//! Free loopback ports for the servers the dev kit starts.

/// A free loopback port (the OS picks it; a race with another process is possible but
/// harmless: the server then fails to bind and says so).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
