package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/boardvisor/boardvisor/drivers/recording"
	"github.com/spf13/cobra"
)

func newLogs() *cobra.Command {
	var stateDir, board, lease string
	var console bool
	cmd := &cobra.Command{
		Use:   "logs --console --lease ID --state-dir DIR [--board NAME]",
		Short: "print a lease's recorded console (run it on the lab host)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !console || lease == "" || stateDir == "" {
				return usageError{errors.New("give --console, --lease ID and --state-dir DIR")}
			}
			boards := []string{board}
			if board == "" {
				dirs, err := os.ReadDir(filepath.Join(stateDir, "console"))
				if err != nil {
					return fmt.Errorf("no console recordings in %s: %w", stateDir, err)
				}
				boards = boards[:0]
				for _, d := range dirs {
					boards = append(boards, d.Name())
				}
			}
			for _, b := range boards {
				r, err := recording.ReadLease(stateDir, b, lease)
				if err != nil {
					continue
				}
				_, err = io.Copy(os.Stdout, r)
				r.Close()
				return err
			}
			return fmt.Errorf("no console recording of lease %s in %s", lease, stateDir)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&console, "console", false, "the lease's console")
	f.StringVar(&lease, "lease", "", "the lease ID")
	f.StringVar(&stateDir, "state-dir", "", "the supervisor's state directory")
	f.StringVar(&board, "board", "", "the board (default: look in every board's recordings)")
	return cmd
}
