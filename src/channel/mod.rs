//! (placeholder; being written) The MCP stdio channel server.
pub fn run() -> u8 {
    eprintln!("channel: not built yet");
    1
}
