//! What a [`Report`](crate::report::Report) looks like to people: the text summary printed at
//! the end of a run, and the self-contained HTML page that embeds it beside its plots.

pub(crate) mod html;
pub(crate) mod summary;
