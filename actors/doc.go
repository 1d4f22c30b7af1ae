// Package actors holds what the supervisor's actors share: the messages they exchange,
// logging through hclog, and panic reporting. Each kind of actor lives in a package of
// its own (host, board, lease, hook, driver, outbox).
//
// The tree (DESIGN.md §5):
//
//	host                      root; builds the tree from config
//	├── outbox                numbers events and hands them to the connector
//	└── board/<name>          status + health; one lease at a time; a small queue
//	    ├── driver/<name>     restarted with back-off; quarantines the board if it keeps failing
//	    └── lease/<job-id>    the jobs FSM; its state lives in a Store, so a restart resumes it
//	        └── hook/<name>   watches one hook run (the shim); re-adopts it after a restart
//
// Actors hold no business rules: a lease actor feeds inputs to jobs.Lease and performs
// the effects it returns.
package actors
