//! Test harnesses shared by Coxswain integration tests.
