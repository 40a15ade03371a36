//! All integration tests of the persister, in one binary.

mod contract;
mod drain;
mod fixture;
mod paging;
