//! Shared harness for the fault-injection tests in `tests/`.
