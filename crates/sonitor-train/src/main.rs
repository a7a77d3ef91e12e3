//! `sonitor-train`: learns what "normal" sounds like and hands the daemon a model bundle.

fn main() -> std::process::ExitCode {
    sonitor_train::cli::main()
}
