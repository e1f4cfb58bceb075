//! Parse and encode settings.

/// Settings shared by parsing and encoding.
///
/// The default follows RFC 7252: tokens are at most 8 bytes and TKL 9–15
/// is a format error. [`CodecSettings::with_extended_tokens`] turns on
/// RFC 8974 extended token lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CodecSettings {
    max_token_len: usize,
}

impl CodecSettings {
    /// RFC 7252 token length limit.
    pub const RFC7252_MAX_TOKEN_LEN: usize = 8;
    /// Longest token RFC 8974 can express (TKL 14: 65535 + 269).
    pub const RFC8974_MAX_TOKEN_LEN: usize = 65535 + 269;

    /// The default: tokens up to 8 bytes, no RFC 8974.
    pub const DEFAULT: CodecSettings = CodecSettings {
        max_token_len: Self::RFC7252_MAX_TOKEN_LEN,
    };

    /// Accepts and produces RFC 8974 extended tokens up to `max_token_len`
    /// bytes (clamped to 8 ..= 65804). Default is off (8 bytes).
    pub const fn with_extended_tokens(mut self, max_token_len: usize) -> CodecSettings {
        self.max_token_len = if max_token_len < Self::RFC7252_MAX_TOKEN_LEN {
            Self::RFC7252_MAX_TOKEN_LEN
        } else if max_token_len > Self::RFC8974_MAX_TOKEN_LEN {
            Self::RFC8974_MAX_TOKEN_LEN
        } else {
            max_token_len
        };
        self
    }

    /// Largest accepted token length in bytes. Default is 8.
    pub const fn max_token_len(&self) -> usize {
        self.max_token_len
    }

    /// True when tokens longer than 8 bytes (RFC 8974) are accepted.
    pub const fn extended_tokens(&self) -> bool {
        self.max_token_len > Self::RFC7252_MAX_TOKEN_LEN
    }
}

impl Default for CodecSettings {
    fn default() -> CodecSettings {
        CodecSettings::DEFAULT
    }
}
