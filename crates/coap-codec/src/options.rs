//! Borrowed options: one option as a number and a value slice, and lazy
//! iterators over a validated options region.

use std::iter::FusedIterator;

use crate::option_number::OptionNumber;
use crate::wire;

/// One option: its number and its raw value bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OptionRef<'a> {
    /// The option number.
    pub number: OptionNumber,
    /// The value bytes, as on the wire.
    pub value: &'a [u8],
}

/// Lazy iterator over the options of a parsed message, in wire order
/// (ascending number; repeated options in the order they appeared).
///
/// The region was validated when the message was parsed, so iteration
/// allocates nothing and cannot fail.
#[derive(Clone, Debug)]
pub struct Options<'a> {
    rest: &'a [u8],
    number: u16,
    remaining: u32,
}

impl<'a> Options<'a> {
    pub(crate) fn new(region: &'a [u8], count: u32) -> Options<'a> {
        Options {
            rest: region,
            number: 0,
            remaining: count,
        }
    }
}

impl<'a> Iterator for Options<'a> {
    type Item = OptionRef<'a>;

    #[inline]
    fn next(&mut self) -> Option<OptionRef<'a>> {
        if self.rest.is_empty() {
            return None;
        }
        match wire::option(self.rest) {
            Ok((rest, (delta, value))) => {
                // The region was validated at parse time; an overflow here
                // cannot happen, but ending the iteration is the safe answer.
                let number = u32::from(self.number) + delta;
                let Ok(number) = u16::try_from(number) else {
                    self.rest = &[];
                    return None;
                };
                self.number = number;
                self.rest = rest;
                self.remaining = self.remaining.saturating_sub(1);
                Some(OptionRef {
                    number: OptionNumber(number),
                    value,
                })
            }
            Err(_) => {
                self.rest = &[];
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.remaining as usize;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Options<'_> {}
impl FusedIterator for Options<'_> {}

/// The values of all occurrences of one option number, in order.
#[derive(Clone, Debug)]
pub struct OptionValues<'a> {
    inner: Options<'a>,
    number: OptionNumber,
}

impl<'a> OptionValues<'a> {
    pub(crate) fn new(inner: Options<'a>, number: OptionNumber) -> OptionValues<'a> {
        OptionValues { inner, number }
    }
}

impl<'a> Iterator for OptionValues<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        for opt in self.inner.by_ref() {
            if opt.number == self.number {
                return Some(opt.value);
            }
            if opt.number > self.number {
                // Options are sorted: nothing further can match.
                self.inner.rest = &[];
                return None;
            }
        }
        None
    }
}

impl FusedIterator for OptionValues<'_> {}
