//! Relative paths inside a workload folder: normalized, and never able to leave it.

/// Why a path cannot name a file inside the workload folder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path is absolute")]
    Absolute,
    #[error("path leads outside the workload folder")]
    Outside,
    #[error("path has a NUL byte or backslash")]
    BadCharacter,
    #[error("path is longer than 1024 bytes")]
    TooLong,
}

/// Normalizes `path` (drops `.` and empty parts) and refuses absolute paths and any `..`, so the
/// result is a `/`-separated path that stays inside the folder it is joined to.
pub fn relative_path(path: &str) -> Result<String, PathError> {
    if path.len() > 1024 {
        return Err(PathError::TooLong);
    }
    if path.contains('\0') || path.contains('\\') {
        return Err(PathError::BadCharacter);
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(PathError::Outside),
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err(PathError::Empty);
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_and_refuses_escapes() {
        assert_eq!(relative_path("./a//b/./c.env").unwrap(), "a/b/c.env");
        assert_eq!(relative_path("../x"), Err(PathError::Outside));
        assert_eq!(relative_path("a/../../x"), Err(PathError::Outside));
        assert_eq!(relative_path("/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(relative_path("./"), Err(PathError::Empty));
        assert_eq!(relative_path("a\\..\\b"), Err(PathError::BadCharacter));
    }
}
