//! Command-line conventions shared by the daemons' tool commands.
//!
//! A command whose output is cut short by its reader (`platen-agent status | head -1`)
//! must end quietly, as `cat` or `grep` do, not with a panic: Rust ignores SIGPIPE, so
//! `println!` meets `EPIPE` and panics (exit 101, a backtrace on stderr). Rather than
//! restoring SIGPIPE for the whole process — the daemons' sockets must never kill them —
//! [`quiet_broken_pipe`] installs a panic hook that turns exactly that panic into a
//! silent exit with status 141 (128 + SIGPIPE, what a shell reports for a killed
//! pipeline member); every other panic is reported as before.

/// The exit status of a command whose reader went away (128 + SIGPIPE).
pub const BROKEN_PIPE_EXIT: i32 = 141;

/// Whether a panic message is the standard library's failure to print to a closed
/// stdout or stderr.
pub fn is_broken_pipe(message: &str) -> bool {
    (message.contains("failed printing to stdout") || message.contains("failed printing to stderr"))
        && message.contains("Broken pipe")
}

/// Install the hook (once, at the start of a tool command).
pub fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if is_broken_pipe(message) {
            std::process::exit(BROKEN_PIPE_EXIT);
        }
        default(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_broken_pipe_print_failure_is_quiet() {
        assert!(is_broken_pipe(
            "failed printing to stdout: Broken pipe (os error 32)"
        ));
        assert!(is_broken_pipe(
            "failed printing to stderr: Broken pipe (os error 32)"
        ));
        assert!(!is_broken_pipe(
            "failed printing to stdout: No space left on device (os error 28)"
        ));
        assert!(!is_broken_pipe("index out of bounds: Broken pipe"));
    }
}
