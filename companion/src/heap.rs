//! Handing freed heap memory back to the system once a config is loaded. Loading builds the
//! document several times over (the YAML's tree, the copy secrets are written into, the typed
//! config), all freed once the clusters and listeners run; glibc's allocator keeps such freed
//! pages in its arenas, where they count in the resident set for the life of the process
//! (megabytes at 10,000 endpoints). `malloc_trim` returns them.

/// Returns the allocator's free pages to the system (glibc only; elsewhere nothing to do).
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointer.
    unsafe {
        libc::malloc_trim(0);
    }
}
