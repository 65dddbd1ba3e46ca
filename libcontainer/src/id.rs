//! Container ids: runc's rule, so an id can never name a path outside the
//! state root.

/// Longest id accepted: one path component.
pub const MAX_ID_LEN: usize = 255;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("invalid container ID format")]
    Format,
    #[error("invalid container ID format: longer than {MAX_ID_LEN} bytes")]
    TooLong,
}

/// Accept `^[\w+\-.]+$` (ASCII word characters, `+`, `-`, `.`), but not `.`
/// or `..`, as runc does.
pub fn validate_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() || id == "." || id == ".." {
        return Err(IdError::Format);
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-' | b'.'))
    {
        return Err(IdError::Format);
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_runc_accepts() {
        for id in [
            "c1",
            "my_container-2",
            "a.b+c",
            "...",
            "A",
            &"x".repeat(255),
        ] {
            assert_eq!(validate_id(id), Ok(()), "{id}");
        }
    }

    #[test]
    fn rejects_paths_and_odd_characters() {
        for id in [
            "", ".", "..", "../x", "a/b", "/abs", "a b", "a\nb", "ü", "a:b", "a\\b",
        ] {
            assert_eq!(validate_id(id), Err(IdError::Format), "{id:?}");
        }
    }

    #[test]
    fn rejects_ids_longer_than_a_file_name() {
        assert_eq!(validate_id(&"x".repeat(256)), Err(IdError::TooLong));
        assert_eq!(validate_id(&"x".repeat(1024)), Err(IdError::TooLong));
    }
}
