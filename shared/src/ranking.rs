//! TODO: filled by its owner.
