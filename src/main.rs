fn main() {
    std::process::exit(gptrain::cli::main());
}
