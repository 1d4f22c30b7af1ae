package main

// How the client commands reach the coordinator and the supervisors: the coordinator's
// address, the user's token, the CA that checks the TLS certificates of both, and the
// client certificate a supervisor may ask for, each from a flag, else the environment,
// else the user's client config file, else a default.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/boardvisor/boardvisor/client"
	"github.com/boardvisor/boardvisor/connector/tlsconf"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"gopkg.in/yaml.v3"
)

// Environment variables the client commands read.
const (
	envCoordinator  = "BOARDVISOR_COORDINATOR"
	envUserToken    = "BOARDVISOR_USER_TOKEN"
	envCAFile       = "BOARDVISOR_CA_FILE"
	envCertFile     = "BOARDVISOR_CERT_FILE"
	envKeyFile      = "BOARDVISOR_KEY_FILE"
	envClientConfig = "BOARDVISOR_CLIENT_CONFIG"
	envExporter     = "BOARDVISOR_EXPORTER"
	envExporterPin  = "BOARDVISOR_EXPORTER_PIN"
	envBoard        = "BOARDVISOR_BOARD"
	envLeaseToken   = "BOARDVISOR_TOKEN"
	envLease        = "BOARDVISOR_LEASE"
	envBoardName    = "BOARD_NAME"
	envShell        = "SHELL"
	envNotifySocket = "NOTIFY_SOCKET"
	envWatchdogUsec = "WATCHDOG_USEC"
)

// envDocs says what each variable is, for --help.
var envDocs = map[string]string{
	envCoordinator:  "the coordinator's address, host:port, or several comma-separated (else coordinator: in the client config; default 127.0.0.1:7400)",
	envUserToken:    "your user token for the coordinator (else token: or tokenFile: in the client config)",
	envCAFile:       "CA certificates (PEM) checking the TLS certificates of the coordinator (set, TLS is on) and of the supervisors that serve TLS (else caFile: in the client config)",
	envCertFile:     "your client certificate (PEM), for supervisors that require one (else certFile: in the client config)",
	envKeyFile:      "its private key (PEM) (else keyFile: in the client config)",
	envClientConfig: "the client config file (default $XDG_CONFIG_HOME/boardvisor/config.yaml, else ~/.config/boardvisor/config.yaml)",
	envExporter:     "the leased board's supervisor, host:port, or tls://host:port over TLS (set by boardvisor shell)",
	envExporterPin:  "the SHA-256 of the supervisor's TLS certificate, trusted instead of the CA file (set for hooks)",
	envBoard:        "the leased board (set by boardvisor shell)",
	envLeaseToken:   "the lease's token (set by boardvisor shell, and for hooks)",
	envLease:        "the lease ID (set by boardvisor shell)",
	envBoardName:    "the board, in a hook (when BOARDVISOR_BOARD is not set)",
	envShell:        "the shell to run with the lease (default /bin/sh)",
	envNotifySocket: "systemd's notification socket: readiness, watchdog and stopping are reported there (Type=notify)",
	envWatchdogUsec: "systemd's watchdog interval: the daemon pings at half of it",
}

// addEnv records the environment variables cmd reads, for its --help.
func addEnv(cmd *cobra.Command, names ...string) {
	if cmd.Annotations == nil {
		cmd.Annotations = map[string]string{}
	}
	have := strings.Fields(cmd.Annotations["env"])
	for _, n := range names {
		if !slices.Contains(have, n) {
			have = append(have, n)
		}
	}
	cmd.Annotations["env"] = strings.Join(have, " ")
}

// envOf lists the variables cmd reads: its own and those of the persistent flags of its
// parents.
func envOf(cmd *cobra.Command) []string {
	var out []string
	for c := cmd; c != nil; c = c.Parent() {
		for _, n := range strings.Fields(c.Annotations["env"]) {
			if !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
	}
	return out
}

// envSection is the "Environment:" part of cmd's --help.
func envSection(cmd *cobra.Command) string {
	names := envOf(cmd)
	if len(names) == 0 {
		return "Environment:\n  none read\n"
	}
	w := 0
	for _, n := range names {
		w = max(w, len(n))
	}
	var b strings.Builder
	b.WriteString("Environment:\n")
	for _, n := range names {
		fmt.Fprintf(&b, "  %-*s  %s\n", w, n, envDocs[n])
	}
	return b.String()
}

// clientConfig is the user's client config file (YAML):
//
//	coordinator: coord.lab:7400
//	token: 3f0c...            # or tokenFile: /path/to/file
//	caFile: /etc/boardvisor/ca.pem
//	certFile: ~/.config/boardvisor/me.pem   # for supervisors that want a client certificate
//	keyFile: ~/.config/boardvisor/me.key
type clientConfig struct {
	Coordinator string `yaml:"coordinator"`
	Token       string `yaml:"token"`
	TokenFile   string `yaml:"tokenFile"`
	CAFile      string `yaml:"caFile"`
	CertFile    string `yaml:"certFile"`
	KeyFile     string `yaml:"keyFile"`
}

// clientConfigPath is where the client config file is.
func clientConfigPath() string {
	if p := os.Getenv(envClientConfig); p != "" {
		return p
	}
	dir := os.Getenv("XDG_CONFIG_HOME")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return ""
		}
		dir = filepath.Join(home, ".config")
	}
	return filepath.Join(dir, "boardvisor", "config.yaml")
}

// loadClientConfig reads the client config file; a missing one is an empty config. A
// file that holds a token must be the user's alone.
func loadClientConfig() (*clientConfig, error) {
	path := clientConfigPath()
	cfg := &clientConfig{}
	if path == "" {
		return cfg, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return cfg, nil
	}
	if err != nil {
		return nil, failf(exitUsage, "client config %s: %v", path, err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return nil, failf(exitUsage, "client config %s: %s (known keys: coordinator, token, tokenFile, caFile, certFile, keyFile)", path, oneLine(err.Error()))
	}
	if cfg.Token != "" {
		if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
			return nil, failf(exitUsage, "client config %s holds your token but others may read it (mode %04o): chmod 600 %s", path, fi.Mode().Perm(), path)
		}
	}
	if cfg.TokenFile != "" && cfg.Token == "" {
		b, err := os.ReadFile(cfg.TokenFile)
		if err != nil {
			return nil, failf(exitUsage, "client config %s: tokenFile: %v", path, err)
		}
		cfg.Token = strings.TrimSpace(string(b))
	}
	return cfg, nil
}

// coordFlags are the flags of a command that talks to the coordinator.
type coordFlags struct {
	addr, token string
	tls         tlsFlags // the coordinator's certificate, and the supervisors' that the command reaches
}

func (c *coordFlags) add(cmd *cobra.Command) { c.addTo(cmd, cmd.Flags()) }

func (c *coordFlags) addPersistent(cmd *cobra.Command) { c.addTo(cmd, cmd.PersistentFlags()) }

func (c *coordFlags) addTo(cmd *cobra.Command, f *pflag.FlagSet) {
	f.StringVar(&c.addr, "coordinator", "", "the coordinator's address, host:port, or several comma-separated (default: $"+envCoordinator+", else coordinator: in the client config, else 127.0.0.1:7400)")
	// A command that also takes a lease's token (logs: --token) names the user's token
	// --user-token.
	name := "token"
	if f.Lookup(name) != nil {
		name = "user-token"
	}
	f.StringVar(&c.token, name, "", "your user token for the coordinator (default: $"+envUserToken+", else token: in the client config; a flag shows in ps, prefer those)")
	c.tls.addTo(cmd, f)
	addEnv(cmd, envCoordinator, envUserToken, envClientConfig)
}

// resolve fills in what the flags leave unset, from the environment, then the client
// config file, then the defaults.
func (c *coordFlags) resolve() error {
	cfg, err := loadClientConfig()
	if err != nil {
		return err
	}
	c.addr = first(c.addr, os.Getenv(envCoordinator), cfg.Coordinator, "127.0.0.1:7400")
	c.token = first(c.token, os.Getenv(envUserToken), cfg.Token)
	c.tls.resolveWith(cfg)
	return nil
}

// peer describes the coordinator, for error messages.
func (c *coordFlags) peer() peer {
	return peer{role: "coordinator", addr: c.addr, caFile: c.tls.caFile,
		hint: "check that it runs and that --coordinator, $" + envCoordinator + " or coordinator: in " + clientConfigPath() + " names it"}
}

// userToken sends the user's coordinator token with every call.
type userToken string

func (t userToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

func (userToken) RequireTransportSecurity() bool { return false }

// dial returns a client of the coordinator's LeaseService (no call is made yet).
func (c *coordFlags) dial() (pb.LeaseServiceClient, func(), error) {
	if err := c.resolve(); err != nil {
		return nil, nil, err
	}
	creds, err := transportCreds(c.tls.caFile)
	if err != nil {
		return nil, nil, err
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if c.token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(userToken(c.token)))
	}
	// Several coordinators (comma-separated): calls follow the active one.
	var addrs []string
	for _, a := range strings.Split(c.addr, ",") {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, a)
		}
	}
	conn, err := client.NewFailover(addrs, opts...)
	if err != nil {
		return nil, nil, failf(exitUsage, "coordinator address %q: %s", c.addr, lastPart(err.Error()))
	}
	return pb.NewLeaseServiceClient(conn), func() { _ = conn.Close() }, nil
}

// transportCreds is plaintext without a CA file, TLS checked against the CA file with one.
func transportCreds(caFile string) (credentials.TransportCredentials, error) {
	if caFile == "" {
		return insecure.NewCredentials(), nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, failf(exitUsage, "CA file: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, failf(exitUsage, "CA file %s holds no PEM certificate", caFile)
	}
	return credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}), nil
}

// first returns the first non-empty string.
func first(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// tlsFlags say how a command checks the TLS certificates of the coordinator and of the
// supervisors (one CA file for both), and what client certificate it presents to a
// supervisor that asks for one.
type tlsFlags struct {
	caFile, certFile, keyFile string
	resolved                  bool
}

// addTo adds the flags to f, unless another set of the command added them already.
func (t *tlsFlags) addTo(cmd *cobra.Command, f *pflag.FlagSet) {
	addEnv(cmd, envCAFile, envCertFile, envKeyFile)
	if f.Lookup("ca-file") != nil {
		return
	}
	f.StringVar(&t.caFile, "ca-file", "", "CA certificates (PEM) that check the TLS certificates of the coordinator (set, TLS is on) and of the supervisors that serve TLS (default: $"+envCAFile+", else caFile: in the client config, else the system's CAs for supervisors)")
	f.StringVar(&t.certFile, "cert-file", "", "your client certificate (PEM), for supervisors that require one (default: $"+envCertFile+", else certFile: in the client config)")
	f.StringVar(&t.keyFile, "key-file", "", "the client certificate's private key (PEM) (default: $"+envKeyFile+", else keyFile: in the client config)")
}

// resolve fills in what the flags leave unset from the environment and the client
// config file.
func (t *tlsFlags) resolve() error {
	if t.resolved {
		return nil
	}
	cfg, err := loadClientConfig()
	if err != nil {
		return err
	}
	t.resolveWith(cfg)
	return nil
}

func (t *tlsFlags) resolveWith(cfg *clientConfig) {
	t.caFile = first(t.caFile, os.Getenv(envCAFile), cfg.CAFile)
	t.certFile = first(t.certFile, os.Getenv(envCertFile), cfg.CertFile)
	t.keyFile = first(t.keyFile, os.Getenv(envKeyFile), cfg.KeyFile)
	t.resolved = true
}

// client is how a supervisor's certificate is checked (resolved first).
func (t *tlsFlags) client() tlsconf.Client {
	return tlsconf.Client{CAFile: t.caFile, CertFile: t.certFile, KeyFile: t.keyFile}
}

// env passes the settings on to the commands run in a lease's shell (power, console,
// logs -f), as absolute paths: the shell's user may change directory.
func (t *tlsFlags) env() []string {
	var env []string
	for _, kv := range [][2]string{{envCAFile, t.caFile}, {envCertFile, t.certFile}, {envKeyFile, t.keyFile}} {
		if kv[1] == "" {
			continue
		}
		p, err := filepath.Abs(kv[1])
		if err != nil {
			p = kv[1]
		}
		env = append(env, kv[0]+"="+p)
	}
	return env
}

// exporterDialer dials the supervisors the coordinator names, with t.
func (t *tlsFlags) exporterDialer() func(endpoint string) (*grpc.ClientConn, error) {
	return func(endpoint string) (*grpc.ClientConn, error) {
		conn, err := client.DialExporter(endpoint, t.client())
		if err != nil {
			return nil, failf(exitUsage, "%s", oneLine(err.Error()))
		}
		return conn, nil
	}
}
