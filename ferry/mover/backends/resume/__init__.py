"""Resume state of interrupted writes: `journal` for local partial files, `remote` for the
state remote backends keep beside their destination (so a new pod on another node resumes)."""
