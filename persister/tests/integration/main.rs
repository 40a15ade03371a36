//! All integration tests of the persister, in one binary.

mod drain;
mod fixture;
