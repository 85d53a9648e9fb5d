//! The `dsr` binary: everything lives in the library; see `dsr --help`.
fn main() -> std::process::ExitCode {
    dsr::cli::main()
}
