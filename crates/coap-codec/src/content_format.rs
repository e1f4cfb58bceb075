//! The CoAP Content-Formats registry (RFC 7252 §12.3 and later IANA entries).

use std::fmt;

/// A Content-Format identifier as carried in the Content-Format and Accept options.
///
/// A newtype over `u16`; unknown values survive a round trip. The registry
/// below maps known values both ways to their media type (and content
/// coding, for the deflate entries 11050/11060).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContentFormat(pub u16);

impl ContentFormat {
    /// 0 `text/plain; charset=utf-8`.
    pub const TEXT_PLAIN: ContentFormat = ContentFormat(0);
    /// 16 `application/cose; cose-type="cose-encrypt0"`.
    pub const COSE_ENCRYPT0: ContentFormat = ContentFormat(16);
    /// 17 `application/cose; cose-type="cose-mac0"`.
    pub const COSE_MAC0: ContentFormat = ContentFormat(17);
    /// 18 `application/cose; cose-type="cose-sign1"`.
    pub const COSE_SIGN1: ContentFormat = ContentFormat(18);
    /// 19 `application/ace+cbor`.
    pub const ACE_CBOR: ContentFormat = ContentFormat(19);
    /// 21 `image/gif`.
    pub const IMAGE_GIF: ContentFormat = ContentFormat(21);
    /// 22 `image/jpeg`.
    pub const IMAGE_JPEG: ContentFormat = ContentFormat(22);
    /// 23 `image/png`.
    pub const IMAGE_PNG: ContentFormat = ContentFormat(23);
    /// 40 `application/link-format`.
    pub const LINK_FORMAT: ContentFormat = ContentFormat(40);
    /// 41 `application/xml`.
    pub const XML: ContentFormat = ContentFormat(41);
    /// 42 `application/octet-stream`.
    pub const OCTET_STREAM: ContentFormat = ContentFormat(42);
    /// 47 `application/exi`.
    pub const EXI: ContentFormat = ContentFormat(47);
    /// 50 `application/json`.
    pub const JSON: ContentFormat = ContentFormat(50);
    /// 51 `application/json-patch+json`.
    pub const JSON_PATCH_JSON: ContentFormat = ContentFormat(51);
    /// 52 `application/merge-patch+json`.
    pub const MERGE_PATCH_JSON: ContentFormat = ContentFormat(52);
    /// 60 `application/cbor`.
    pub const CBOR: ContentFormat = ContentFormat(60);
    /// 61 `application/cwt`.
    pub const CWT: ContentFormat = ContentFormat(61);
    /// 62 `application/multipart-core`.
    pub const MULTIPART_CORE: ContentFormat = ContentFormat(62);
    /// 63 `application/cbor-seq`.
    pub const CBOR_SEQ: ContentFormat = ContentFormat(63);
    /// 96 `application/cose; cose-type="cose-encrypt"`.
    pub const COSE_ENCRYPT: ContentFormat = ContentFormat(96);
    /// 97 `application/cose; cose-type="cose-mac"`.
    pub const COSE_MAC: ContentFormat = ContentFormat(97);
    /// 98 `application/cose; cose-type="cose-sign"`.
    pub const COSE_SIGN: ContentFormat = ContentFormat(98);
    /// 101 `application/cose-key`.
    pub const COSE_KEY: ContentFormat = ContentFormat(101);
    /// 102 `application/cose-key-set`.
    pub const COSE_KEY_SET: ContentFormat = ContentFormat(102);
    /// 110 `application/senml+json`.
    pub const SENML_JSON: ContentFormat = ContentFormat(110);
    /// 111 `application/sensml+json`.
    pub const SENSML_JSON: ContentFormat = ContentFormat(111);
    /// 112 `application/senml+cbor`.
    pub const SENML_CBOR: ContentFormat = ContentFormat(112);
    /// 113 `application/sensml+cbor`.
    pub const SENSML_CBOR: ContentFormat = ContentFormat(113);
    /// 114 `application/senml-exi`.
    pub const SENML_EXI: ContentFormat = ContentFormat(114);
    /// 115 `application/sensml-exi`.
    pub const SENSML_EXI: ContentFormat = ContentFormat(115);
    /// 256 `application/coap-group+json`.
    pub const COAP_GROUP_JSON: ContentFormat = ContentFormat(256);
    /// 271 `application/dots+cbor`.
    pub const DOTS_CBOR: ContentFormat = ContentFormat(271);
    /// 272 `application/missing-blocks+cbor-seq`.
    pub const MISSING_BLOCKS_CBOR_SEQ: ContentFormat = ContentFormat(272);
    /// 280 `application/pkcs7-mime; smime-type=server-generated-key`.
    pub const PKCS7_SERVER_GENERATED_KEY: ContentFormat = ContentFormat(280);
    /// 281 `application/pkcs7-mime; smime-type=certs-only`.
    pub const PKCS7_CERTS_ONLY: ContentFormat = ContentFormat(281);
    /// 284 `application/pkcs8`.
    pub const PKCS8: ContentFormat = ContentFormat(284);
    /// 285 `application/csrattrs`.
    pub const CSRATTRS: ContentFormat = ContentFormat(285);
    /// 286 `application/pkcs10`.
    pub const PKCS10: ContentFormat = ContentFormat(286);
    /// 287 `application/pkix-cert`.
    pub const PKIX_CERT: ContentFormat = ContentFormat(287);
    /// 310 `application/senml+xml`.
    pub const SENML_XML: ContentFormat = ContentFormat(310);
    /// 311 `application/sensml+xml`.
    pub const SENSML_XML: ContentFormat = ContentFormat(311);
    /// 320 `application/senml-etch+json`.
    pub const SENML_ETCH_JSON: ContentFormat = ContentFormat(320);
    /// 322 `application/senml-etch+cbor`.
    pub const SENML_ETCH_CBOR: ContentFormat = ContentFormat(322);
    /// 432 `application/td+json`.
    pub const TD_JSON: ContentFormat = ContentFormat(432);
    /// 10000 `application/vnd.ocf+cbor`.
    pub const OCF_CBOR: ContentFormat = ContentFormat(10000);
    /// 10001 `application/oscore`.
    pub const OSCORE: ContentFormat = ContentFormat(10001);
    /// 10002 `application/javascript`.
    pub const JAVASCRIPT: ContentFormat = ContentFormat(10002);
    /// 11050 `application/json` with content coding `deflate`.
    pub const JSON_DEFLATE: ContentFormat = ContentFormat(11050);
    /// 11060 `application/cbor` with content coding `deflate`.
    pub const CBOR_DEFLATE: ContentFormat = ContentFormat(11060);
    /// 11542 `application/vnd.oma.lwm2m+tlv`.
    pub const LWM2M_TLV: ContentFormat = ContentFormat(11542);
    /// 11543 `application/vnd.oma.lwm2m+json`.
    pub const LWM2M_JSON: ContentFormat = ContentFormat(11543);
    /// 11544 `application/vnd.oma.lwm2m+cbor`.
    pub const LWM2M_CBOR: ContentFormat = ContentFormat(11544);
    /// 20000 `text/css`.
    pub const TEXT_CSS: ContentFormat = ContentFormat(20000);
    /// 30000 `image/svg+xml`.
    pub const IMAGE_SVG_XML: ContentFormat = ContentFormat(30000);

    /// The registry: (id, media type with parameters, content coding).
    const REGISTRY: &'static [(u16, &'static str, Option<&'static str>)] = &[
        (0, "text/plain; charset=utf-8", None),
        (16, "application/cose; cose-type=\"cose-encrypt0\"", None),
        (17, "application/cose; cose-type=\"cose-mac0\"", None),
        (18, "application/cose; cose-type=\"cose-sign1\"", None),
        (19, "application/ace+cbor", None),
        (21, "image/gif", None),
        (22, "image/jpeg", None),
        (23, "image/png", None),
        (40, "application/link-format", None),
        (41, "application/xml", None),
        (42, "application/octet-stream", None),
        (47, "application/exi", None),
        (50, "application/json", None),
        (51, "application/json-patch+json", None),
        (52, "application/merge-patch+json", None),
        (60, "application/cbor", None),
        (61, "application/cwt", None),
        (62, "application/multipart-core", None),
        (63, "application/cbor-seq", None),
        (96, "application/cose; cose-type=\"cose-encrypt\"", None),
        (97, "application/cose; cose-type=\"cose-mac\"", None),
        (98, "application/cose; cose-type=\"cose-sign\"", None),
        (101, "application/cose-key", None),
        (102, "application/cose-key-set", None),
        (110, "application/senml+json", None),
        (111, "application/sensml+json", None),
        (112, "application/senml+cbor", None),
        (113, "application/sensml+cbor", None),
        (114, "application/senml-exi", None),
        (115, "application/sensml-exi", None),
        (256, "application/coap-group+json", None),
        (271, "application/dots+cbor", None),
        (272, "application/missing-blocks+cbor-seq", None),
        (
            280,
            "application/pkcs7-mime; smime-type=server-generated-key",
            None,
        ),
        (281, "application/pkcs7-mime; smime-type=certs-only", None),
        (284, "application/pkcs8", None),
        (285, "application/csrattrs", None),
        (286, "application/pkcs10", None),
        (287, "application/pkix-cert", None),
        (310, "application/senml+xml", None),
        (311, "application/sensml+xml", None),
        (320, "application/senml-etch+json", None),
        (322, "application/senml-etch+cbor", None),
        (432, "application/td+json", None),
        (10000, "application/vnd.ocf+cbor", None),
        (10001, "application/oscore", None),
        (10002, "application/javascript", None),
        (11050, "application/json", Some("deflate")),
        (11060, "application/cbor", Some("deflate")),
        (11542, "application/vnd.oma.lwm2m+tlv", None),
        (11543, "application/vnd.oma.lwm2m+json", None),
        (11544, "application/vnd.oma.lwm2m+cbor", None),
        (20000, "text/css", None),
        (30000, "image/svg+xml", None),
    ];

    /// The raw identifier.
    pub const fn value(self) -> u16 {
        self.0
    }

    /// The registered media type including parameters, e.g.
    /// `"text/plain; charset=utf-8"`; `None` if the id is not in the registry.
    pub fn media_type(self) -> Option<&'static str> {
        Self::entry(self.0).map(|(_, mt, _)| mt)
    }

    /// The content coding of the entry (`Some("deflate")` for 11050 and 11060).
    pub fn content_coding(self) -> Option<&'static str> {
        Self::entry(self.0).and_then(|(_, _, cc)| cc)
    }

    /// Looks up the identity-coded Content-Format for a media type.
    ///
    /// Matching ignores ASCII case and whitespace around `;` and `=`, so
    /// `"text/plain;charset=UTF-8"` finds 0.
    pub fn from_media_type(media_type: &str) -> Option<ContentFormat> {
        Self::from_media_type_and_coding(media_type, None)
    }

    /// Looks up a Content-Format by media type and content coding
    /// (`None` or `Some("identity")` for no coding).
    pub fn from_media_type_and_coding(
        media_type: &str,
        coding: Option<&str>,
    ) -> Option<ContentFormat> {
        let coding = coding.filter(|c| !c.eq_ignore_ascii_case("identity"));
        Self::REGISTRY
            .iter()
            .find(|(_, mt, cc)| {
                media_type_eq(mt, media_type)
                    && match (cc, coding) {
                        (None, None) => true,
                        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b.trim()),
                        _ => false,
                    }
            })
            .map(|(id, _, _)| ContentFormat(*id))
    }

    fn entry(id: u16) -> Option<(u16, &'static str, Option<&'static str>)> {
        Self::REGISTRY
            .binary_search_by_key(&id, |(i, _, _)| *i)
            .ok()
            .and_then(|idx| Self::REGISTRY.get(idx).copied())
    }
}

/// Compares two media type strings ignoring ASCII case and spaces/tabs.
fn media_type_eq(a: &str, b: &str) -> bool {
    let a = a.bytes().filter(|c| !matches!(c, b' ' | b'\t'));
    let b = b.bytes().filter(|c| !matches!(c, b' ' | b'\t'));
    a.map(|c| c.to_ascii_lowercase())
        .eq(b.map(|c| c.to_ascii_lowercase()))
}

impl From<u16> for ContentFormat {
    fn from(v: u16) -> ContentFormat {
        ContentFormat(v)
    }
}

impl From<ContentFormat> for u16 {
    fn from(v: ContentFormat) -> u16 {
        v.0
    }
}

/// Formats as the media type (with `; coding` for deflate entries) or the bare number.
impl fmt::Display for ContentFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.media_type(), self.content_coding()) {
            (Some(mt), Some(cc)) => write!(f, "{mt} ({cc})"),
            (Some(mt), None) => f.write_str(mt),
            (None, _) => write!(f, "{}", self.0),
        }
    }
}

impl fmt::Debug for ContentFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentFormat({} {self})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_is_sorted_so_binary_search_works() {
        assert!(ContentFormat::REGISTRY.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn maps_both_ways() {
        for &(id, mt, cc) in ContentFormat::REGISTRY {
            let cf = ContentFormat(id);
            assert_eq!(cf.media_type(), Some(mt));
            assert_eq!(ContentFormat::from_media_type_and_coding(mt, cc), Some(cf));
        }
        assert_eq!(
            ContentFormat::from_media_type("text/plain;charset=UTF-8"),
            Some(ContentFormat::TEXT_PLAIN)
        );
        assert_eq!(
            ContentFormat::from_media_type("application/json"),
            Some(ContentFormat::JSON)
        );
        assert_eq!(
            ContentFormat::from_media_type_and_coding("application/json", Some("deflate")),
            Some(ContentFormat::JSON_DEFLATE)
        );
        assert_eq!(
            ContentFormat::SENML_CBOR.media_type(),
            Some("application/senml+cbor")
        );
        assert_eq!(ContentFormat::from_media_type("application/x-nope"), None);
        assert_eq!(ContentFormat(9999).media_type(), None);
        assert_eq!(ContentFormat(9999).to_string(), "9999");
        assert_eq!(
            ContentFormat::CBOR_DEFLATE.to_string(),
            "application/cbor (deflate)"
        );
    }
}
