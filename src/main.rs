fn main() {
    let code = gptrain::cli::main();
    if gptrain::train::left_a_thread_in_nccl() {
        // a thread is still inside NCCL's start: exit without the libraries' teardown (the
        // CUDA runtime inside NCCL would run it under that thread's feet)
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        // SAFETY: ends the process at once; every output has been flushed above.
        unsafe { libc::_exit(code) }
    }
    std::process::exit(code);
}
