//! All integration tests of the history store, in one binary.

mod contract;
mod fixture;
mod paging;
mod schema;
