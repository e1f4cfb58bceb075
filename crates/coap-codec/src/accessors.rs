//! Typed option accessors shared by [`crate::MessageRef`] and
//! [`crate::Message`]. Both types provide `option(number)`; this macro adds
//! the typed readers on top, so the two views answer identically.

/// Expands to typed accessor methods inside an `impl` block whose type has
/// `fn option(&self, OptionNumber) -> Option<&[u8]>`.
macro_rules! typed_option_accessors {
    () => {
        /// The first value of a uint option; `None` when absent or longer than 4 bytes.
        pub fn uint_option(&self, number: $crate::OptionNumber) -> Option<u32> {
            self.option(number)
                .and_then(|v| $crate::option_value::decode_uint(v).ok())
        }

        /// Content-Format; `None` when absent or malformed (an elective
        /// option that is malformed is ignored, RFC 7252 §5.4.1).
        pub fn content_format(&self) -> Option<$crate::ContentFormat> {
            self.option($crate::OptionNumber::CONTENT_FORMAT)
                .filter(|v| v.len() <= 2)
                .and_then(|v| $crate::option_value::decode_uint(v).ok())
                .and_then(|v| u16::try_from(v).ok())
                .map($crate::ContentFormat)
        }

        /// Accept; `None` when absent or malformed.
        pub fn accept(&self) -> Option<$crate::ContentFormat> {
            self.option($crate::OptionNumber::ACCEPT)
                .filter(|v| v.len() <= 2)
                .and_then(|v| $crate::option_value::decode_uint(v).ok())
                .and_then(|v| u16::try_from(v).ok())
                .map($crate::ContentFormat)
        }

        /// Observe (RFC 7641); `None` when absent or longer than 3 bytes.
        pub fn observe(&self) -> Option<u32> {
            self.option($crate::OptionNumber::OBSERVE)
                .and_then(|v| $crate::option_value::observe::decode(v).ok())
        }

        /// Block1 (RFC 7959); `None` when absent or longer than 3 bytes.
        /// In requests, [`crate::validate_request`] reports the malformed case.
        pub fn block1(&self) -> Option<$crate::Block> {
            self.option($crate::OptionNumber::BLOCK1)
                .and_then(|v| $crate::Block::decode(v).ok())
        }

        /// Block2 (RFC 7959); `None` when absent or longer than 3 bytes.
        pub fn block2(&self) -> Option<$crate::Block> {
            self.option($crate::OptionNumber::BLOCK2)
                .and_then(|v| $crate::Block::decode(v).ok())
        }

        /// Size1 (RFC 7252 §5.10.9, RFC 7959 §4); `None` when absent or malformed.
        pub fn size1(&self) -> Option<u32> {
            self.uint_option($crate::OptionNumber::SIZE1)
        }

        /// Size2 (RFC 7959 §4); `None` when absent or malformed.
        pub fn size2(&self) -> Option<u32> {
            self.uint_option($crate::OptionNumber::SIZE2)
        }

        /// Max-Age in seconds; `None` when absent (the default then is 60,
        /// RFC 7252 §5.10.5) or malformed.
        pub fn max_age(&self) -> Option<u32> {
            self.uint_option($crate::OptionNumber::MAX_AGE)
        }

        /// True when an If-None-Match option is present.
        pub fn if_none_match(&self) -> bool {
            self.option($crate::OptionNumber::IF_NONE_MATCH).is_some()
        }

        /// Uri-Host as UTF-8; `None` when absent or not UTF-8.
        pub fn uri_host(&self) -> Option<&str> {
            self.option($crate::OptionNumber::URI_HOST)
                .and_then(|v| std::str::from_utf8(v).ok())
        }

        /// Uri-Port; `None` when absent or malformed.
        pub fn uri_port(&self) -> Option<u16> {
            self.option($crate::OptionNumber::URI_PORT)
                .and_then(|v| $crate::option_value::decode_uint(v).ok())
                .and_then(|v| u16::try_from(v).ok())
        }

        /// True for an empty CON, the CoAP "ping" (RFC 7252 §4.3).
        pub fn is_ping(&self) -> bool {
            self.mtype() == $crate::MessageType::Con && self.code().is_empty()
        }
    };
}

pub(crate) use typed_option_accessors;
