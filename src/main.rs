//! The `banjo` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    banjo::cli::main(std::env::args().skip(1).collect())
}
