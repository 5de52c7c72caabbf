//! What a role's extractor made of one sample.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seen {
    /// Not a family of the role.
    Foreign,
    /// A family of the role the extractor does not read.
    Unread,
    /// One of [`super::read_samples`].
    Read,
}
