//! Short byte strings kept inline: most tokens and cached piggybacked
//! answers of idle observers fit, and then cost no heap allocation (a
//! 32-byte malloc chunk each otherwise).

use std::ops::Deref;

/// Bytes stored inline when at most `N` long, else in one exact-size box.
/// `N = 22` makes it 24 bytes: a `Box<[u8]>` and the variant tag.
#[derive(Clone)]
pub(crate) enum SmallBytes<const N: usize> {
    Inline { len: u8, data: [u8; N] },
    Heap(Box<[u8]>),
}

impl<const N: usize> SmallBytes<N> {
    pub(crate) fn new(bytes: &[u8]) -> Self {
        match u8::try_from(bytes.len()) {
            Ok(len) if bytes.len() <= N => {
                let mut data = [0u8; N];
                if let Some(prefix) = data.get_mut(..bytes.len()) {
                    prefix.copy_from_slice(bytes);
                }
                SmallBytes::Inline { len, data }
            }
            _ => SmallBytes::Heap(Box::from(bytes)),
        }
    }
}

impl<const N: usize> Deref for SmallBytes<N> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            SmallBytes::Inline { len, data } => data.get(..usize::from(*len)).unwrap_or(&[]),
            SmallBytes::Heap(bytes) => bytes,
        }
    }
}

impl<const N: usize> std::fmt::Debug for SmallBytes<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x?}", &**self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_inline_and_boxed() {
        for len in [0usize, 1, 8, 14, 15, 22, 23, 300] {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
            assert_eq!(&*SmallBytes::<8>::new(&bytes), &bytes[..]);
            assert_eq!(&*SmallBytes::<22>::new(&bytes), &bytes[..]);
            assert_eq!(
                matches!(SmallBytes::<22>::new(&bytes), SmallBytes::Inline { .. }),
                len <= 22
            );
        }
        assert_eq!(std::mem::size_of::<SmallBytes<22>>(), 24);
    }
}
