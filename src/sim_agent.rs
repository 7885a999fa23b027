//! (placeholder; being written) The simulated Claude.
pub fn run(_args: Vec<String>) -> u8 {
    eprintln!("sim-agent: not built yet");
    1
}
