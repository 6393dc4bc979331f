//! Values the configuration parses once but shows, and compares, as they were written:
//! the dump and `persist` write them back unchanged, and a reload sees a change only
//! where the text changed.

/// `as_str`, `PartialEq`, `Eq`, `Display` and `Serialize` for `$name` by its source
/// text, `$text`: a field holding a `String` or a compiled regex.
macro_rules! shown_as_written {
    ($name:ident, $text:tt) => {
        impl $name {
            /// The value as written.
            pub fn as_str(&self) -> &str {
                self.$text.as_str()
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.as_str() == other.as_str()
            }
        }

        impl Eq for $name {}

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
    };
}
