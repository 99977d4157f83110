//! kodel-agent: the stateless worker that takes AI jobs from the server. The worker
//! itself arrives with the agents issue; until then this binary says so plainly.

fn main() {
    let arg = std::env::args().nth(1);
    if matches!(arg.as_deref(), Some("--version" | "-V")) {
        println!("kodel-agent {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    eprintln!("kodel-agent: agent workers are not available in this version of Kodel yet");
    std::process::exit(2);
}
