// Package layering holds no code, only tests that keep the repository's structure true:
// the import rule of docs/architecture.md ("dependencies point one way") and the test
// names that document cites. Run them with `go test ./internal/layering`.
package layering
