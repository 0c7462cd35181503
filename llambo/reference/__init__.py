"""Reference backend: pure-numpy inference on GGUF files, judged by parity with llama.cpp."""
