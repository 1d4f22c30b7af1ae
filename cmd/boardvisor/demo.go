package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"time"

	"github.com/boardvisor/boardvisor/client"
	"github.com/boardvisor/boardvisor/coordinator"
	"github.com/boardvisor/boardvisor/supervisor/config"
	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
)

// demoConfig is the supervisor of the demo: three simulated boards whose hooks print
// JMP_ lines with small pauses, as an operator's scripts would. The flashing step is a
// Python program that prints without flushing: into a pipe its lines would all arrive at
// its end, on the hook's terminal each arrives as it is printed. The progress bar is
// redrawn with carriage returns and shows in place in the shell.
const demoConfig = `stateDir: %[1]s/supervisor
listen: 127.0.0.1:0
log: {level: info, format: text}
coordinator:
  address: %[2]s
  supervisorId: demo-lab
%[3]sdefaults:
  leaseDuration: 10m
%[4]s  hooks:
    beforeLease:
      timeout: 30s
      onFailure: endLease
      script: |
        echo "JMP_INFO: Powering on device..."
        sleep 0.3
        flash='import os, sys, time
        print("JMP_INFO: Flashing image to " + os.environ["BOARD_NAME"] + " (device=" + os.environ.get("BOARD_LABEL_DEVICE", "?") + ")...")
        for block in range(1, 5):
            time.sleep(0.15)
            print("JMP_INFO: wrote block " + str(block) + " of 4")
        time.sleep(0.2)
        print("JMP_WARN: USB hub is slow today; flashing took longer than usual")'
        if command -v python3 >/dev/null; then python3 -c "$flash"; else
          echo "JMP_INFO: Flashing image to $BOARD_NAME (device=$BOARD_LABEL_DEVICE)..."
          echo "JMP_WARN: USB hub is slow today; flashing took longer than usual"
        fi
        i=0
        while [ $i -le 100 ]; do printf '\rJMP_INFO: Verifying image: %%3d%%%%' $i; i=$((i+5)); sleep 0.05; done
        printf '\n'
        echo "JMP_INFO: Board booted, console ready"
    afterLease:
      timeout: 30s
      onFailure: warn
      script: |
        echo "Saving logs to archive..."
        sleep 0.3
        echo "Powering off device..."
boards:
  - name: rpi4-01
    labels: {device: rpi4, arch: arm64}
  - name: rpi4-02
    labels: {device: rpi4, arch: arm64}
  - name: qemu-x86-01
    labels: {device: qemu, arch: x86_64}
`

func newDemo(g *globalFlags) *cobra.Command {
	var keep bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "run a coordinator, a supervisor with simulated boards, and one scripted lease",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, err := os.MkdirTemp("", "boardvisor-demo-")
			if err != nil {
				return err
			}
			if keep {
				defer fmt.Printf("boardvisor demo: kept in %s (the daemons' log is %s)\n", dir, filepath.Join(dir, "daemons.log"))
			} else {
				defer os.RemoveAll(dir)
			}
			logPath := filepath.Join(dir, "daemons.log")
			logFile, err := os.Create(logPath)
			if err != nil {
				return err
			}
			defer logFile.Close()
			// The daemons log to a file: the terminal shows what a board user sees.
			logger := hclog.New(&hclog.LoggerOptions{Name: "boardvisor", Level: hclog.Info, Output: logFile})
			return runDemo(cmd.Context(), dir, logger, keep)
		},
	}
	cmd.Flags().BoolVar(&keep, "keep", false, "keep the demo's state directory (the daemons' log, databases, hook spools) and say where it is")
	return cmd
}

func runDemo(parent context.Context, dir string, logger hclog.Logger, keep bool) error {
	if parent == nil {
		parent = context.Background()
	}
	ctx, cancel := context.WithTimeout(parent, 2*time.Minute)
	defer cancel()
	daemons, stopDaemons := context.WithCancel(context.Background())
	errs := make(chan error, 2)
	coordAddr := make(chan string, 1)
	go func() {
		errs <- serveCoordinator(daemons, coordinator.Options{StateDir: filepath.Join(dir, "coordinator"), Logger: logger.Named("coordinator")},
			"127.0.0.1:0", "", webServe{}, nil, func(a string) { coordAddr <- a })
	}()
	var addr string
	select {
	case addr = <-coordAddr:
	case err := <-errs:
		stopDaemons()
		return fmt.Errorf("demo coordinator: %w", err)
	}
	// As root, the demo's hooks run as nobody, as a lab's should (runAs); as another
	// user, they run as that user.
	runAsRoot, runAs := "", ""
	if os.Geteuid() == 0 {
		runAs = "  runAs: {user: nobody}\n"
		if _, err := user.Lookup("nobody"); err != nil {
			runAsRoot, runAs = "runAsRoot: true\n", "" // a host without nobody
		}
	}
	cfg, err := config.Parse("demo.yaml", fmt.Appendf(nil, demoConfig, dir, addr, runAsRoot, runAs))
	if err != nil {
		stopDaemons()
		return err
	}
	go func() { errs <- serveSupervisor(daemons, cfg, logger.Named("supervisor"), nil, nil) }()
	defer func() {
		stopDaemons()
		for i := 0; i < 2; i++ {
			if err := <-errs; err != nil {
				fmt.Fprintf(os.Stderr, "boardvisor demo: %v\n", err)
			}
		}
	}()

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	leases := pb.NewLeaseServiceClient(conn)
	where := "their log is removed at the end: keep it with --keep, or make demo KEEP=1"
	if keep {
		where = "their log: " + filepath.Join(dir, "daemons.log")
	}
	fmt.Printf("boardvisor demo: a coordinator and a supervisor with 3 simulated boards are running (%s)\n", where)
	if err := waitBoards(ctx, leases, 3); err != nil {
		return err
	}
	fmt.Println("$ boardvisor shell -l device=rpi4")
	c := &client.Client{Leases: leases, Out: os.Stdout}
	lease, err := c.Acquire(ctx, client.Request{Selector: "device=rpi4", Duration: 10 * time.Minute, Client: "demo-user"})
	if err != nil {
		return err
	}
	s, err := c.Connect(ctx, lease)
	c.Detach()
	if err != nil {
		return err
	}
	fmt.Printf("[%s] $ echo \"hello from $BOARDVISOR_BOARD\"   # the shell runs with the lease; its prompt names the board\n", lease.GetBoard())
	fmt.Printf("hello from %s\n", lease.GetBoard())
	fmt.Printf("[%s] $ exit\n", lease.GetBoard())
	if err := s.Release(ctx); err != nil {
		return err
	}
	// The board is back in the pool.
	if err := waitBoardStatus(ctx, leases, lease.GetBoard(), "EXPORTER_STATUS_AVAILABLE"); err != nil {
		return err
	}
	fmt.Printf("boardvisor demo: done; %s is AVAILABLE again.\n", lease.GetBoard())
	return nil
}

// waitBoards waits until n boards are known to the coordinator and AVAILABLE.
func waitBoards(ctx context.Context, leases pb.LeaseServiceClient, n int) error {
	for {
		r, err := leases.ListBoards(ctx, &pb.ListBoardsRequest{})
		if err == nil {
			ready := 0
			for _, b := range r.GetBoards() {
				if b.GetStatus().String() == "EXPORTER_STATUS_AVAILABLE" {
					ready++
				}
			}
			if ready >= n {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return errors.New("demo: the boards did not come up in time")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func waitBoardStatus(ctx context.Context, leases pb.LeaseServiceClient, board, status string) error {
	for {
		r, err := leases.ListBoards(ctx, &pb.ListBoardsRequest{})
		if err == nil {
			for _, b := range r.GetBoards() {
				if b.GetName() == board && b.GetStatus().String() == status {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("demo: board %s did not become %s in time", board, status)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
