"""Build orchestration for llambo: toolchain checks, pinned llama.cpp source, CMake flags, default model."""
