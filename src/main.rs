fn main() {
    std::process::exit(labforge::cli::run());
}
