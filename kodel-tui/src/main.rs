use clap::Parser;
use kodel_tui::cli::Cli;
use kodel_tui::commands;
use kodel_tui::exit;

fn main() {
    let cli = Cli::parse();
    // A command's output piped into `head` that stops reading ends the command quietly,
    // as other command-line tools do, instead of a panic on the broken pipe. Not for
    // `kodel up` and the TUI: they must live to stop the server and agent they started.
    if !matches!(cli.command, None | Some(kodel_tui::cli::Command::Up(_))) {
        // SAFETY: set before any thread starts; the default action needs no handler.
        unsafe {
            let _ = nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl);
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kodel: {e}");
            std::process::exit(exit::FAILURE);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => {}
        Err(err) => {
            eprintln!("kodel: {}", err.message);
            if let Some(hint) = &err.hint {
                eprintln!("hint: {hint}");
            }
            std::process::exit(err.code);
        }
    }
}
