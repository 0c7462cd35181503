"""Native backend: llama.cpp through ctypes."""
