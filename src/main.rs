//! The `liaison` binary: parses arguments and hands over to [`liaison::cli::run`].
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    liaison::cli::main()
}
