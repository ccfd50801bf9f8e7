//! Request headers as routing and content negotiation read them, whichever path parsed them.

/// Request headers as routing reads them: hyper's header map, or the headers trellis's own
/// HTTP/1 path parsed in place.
pub trait HeaderSource {
    /// Calls `f` with each value of header `name` that is text, until `f` returns true;
    /// returns whether it did.
    fn any_value(&self, name: &http::HeaderName, f: &mut dyn FnMut(&str) -> bool) -> bool;
}

impl HeaderSource for http::HeaderMap {
    fn any_value(&self, name: &http::HeaderName, f: &mut dyn FnMut(&str) -> bool) -> bool {
        self.get_all(name)
            .iter()
            .any(|v| v.to_str().is_ok_and(&mut *f))
    }
}

impl HeaderSource for [httparse::Header<'_>] {
    fn any_value(&self, name: &http::HeaderName, f: &mut dyn FnMut(&str) -> bool) -> bool {
        self.iter().any(|h| {
            h.name.eq_ignore_ascii_case(name.as_str())
                && std::str::from_utf8(h.value).is_ok_and(&mut *f)
        })
    }
}
