//! Typed arena ids: a `NodeId` cannot be used where a `ValueId` is meant.

use std::fmt;

macro_rules! entity_id {
    ($name:ident, $prefix:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(u32);

        impl $name {
            pub(crate) fn new(index: usize) -> $name {
                // Arenas hold far fewer than 2^32 entries; saturate rather than wrap.
                $name(u32::try_from(index).unwrap_or(u32::MAX))
            }

            /// The arena index, for side tables indexed like the graph's arenas.
            pub fn index(self) -> usize {
                self.0 as usize
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
    };
}

entity_id!(NodeId, "n", "A node of one graph, printed `n3`.");
entity_id!(ValueId, "v", "A value of one graph, printed `v7`.");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_with_prefix() {
        assert_eq!(NodeId::new(3).to_string(), "n3");
        assert_eq!(format!("{:?}", ValueId::new(7)), "v7");
        assert_eq!(ValueId::new(7).index(), 7);
    }
}
