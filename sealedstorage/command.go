package sealedstorage

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	"github.com/domaincerts/caddy-domaincerts/internal/seal"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "seal-keygen",
		Short: "Prints a new random key for the sealed storage",
		Long: `
Prints 32 random bytes in base64, a key for the sealed storage
(caddy.storage.sealed). Keep it out of the config: put it in an environment
variable or a file readable by Caddy only, and refer to it with
{env.NAME}, {file.PATH} or key_file.
`,
		Func: func(caddycmd.Flags) (int, error) {
			if err := keygen(os.Stdout); err != nil {
				return caddy.ExitCodeFailedStartup, err
			}
			return caddy.ExitCodeSuccess, nil
		},
	})

	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "seal-reseal",
		Usage: "--config <path> [--adapter <name>] [--dry-run] [--verbose]",
		Short: "Reseals a sealed storage under its current key",
		Long: `
Loads the sealed storage of the given config and walks every value in it.
Values sealed under an old key (old_keys) are resealed under the current key,
and values found unsealed at a sealed path are sealed. Afterwards old_keys and
allow_unsealed can be removed from the config.

It prints the paths it resealed and could not handle, and counts; never
values. With --dry-run it writes nothing. Run it when the storage is quiet.
`,
		Func:  cmdReseal,
		Flags: resealFlags(),
	})
}

func resealFlags() *flag.FlagSet {
	fs := flag.NewFlagSet("seal-reseal", flag.ExitOnError)
	fs.String("config", "", "Configuration file whose storage is sealed (required)")
	fs.String("adapter", "", "Name of config adapter to apply")
	fs.Bool("dry-run", false, "Report what would be resealed, write nothing")
	fs.Bool("verbose", false, "Also list the paths that are current or skipped")
	return fs
}

func keygen(w io.Writer) error {
	k, err := seal.GenerateKey()
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, seal.EncodeKey(k))
	clear(k)
	return err
}

func cmdReseal(fl caddycmd.Flags) (int, error) {
	configFile := fl.String("config")
	if configFile == "" {
		return caddy.ExitCodeFailedStartup, errors.New("--config is required")
	}
	cfgJSON, _, _, err := caddycmd.LoadConfig(configFile, fl.String("adapter"))
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	opts := ResealOptions{DryRun: fl.Bool("dry-run")}
	if err := reseal(context.Background(), cfgJSON, opts, fl.Bool("verbose"), os.Stdout); err != nil {
		return caddy.ExitCodeFailedQuit, err
	}
	return caddy.ExitCodeSuccess, nil
}

// reseal loads the sealed storage of the JSON config cfgJSON with a bare
// context (as `caddy storage export` does), runs Reseal and prints the report.
func reseal(ctx context.Context, cfgJSON []byte, opts ResealOptions, verbose bool, w io.Writer) error {
	var cfg struct {
		StorageRaw json.RawMessage `json:"storage,omitempty" caddy:"namespace=caddy.storage inline_key=module"`
	}
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		return fmt.Errorf("decoding config: %w", err)
	}
	if cfg.StorageRaw == nil {
		return errors.New("the config has no storage; seal-reseal needs \"storage\": {\"module\": \"sealed\", ...}")
	}
	cctx, cancel := caddy.NewContext(caddy.Context{Context: ctx})
	defer cancel()
	mod, err := cctx.LoadModule(&cfg, "StorageRaw")
	if err != nil {
		return fmt.Errorf("loading storage module: %w", err)
	}
	sm, ok := mod.(*SealedStorage)
	if !ok {
		id := fmt.Sprintf("%T", mod)
		if m, ok := mod.(caddy.Module); ok {
			id = string(m.CaddyModule().ID)
		}
		return fmt.Errorf("the config's storage is %s, not caddy.storage.sealed", id)
	}
	r, err := sm.Storage().Reseal(cctx, opts)
	printReport(w, sm.Storage(), r, opts, verbose)
	return err
}

func printReport(w io.Writer, st *Storage, r Report, opts ResealOptions, verbose bool) {
	verb := "resealed"
	if opts.DryRun {
		verb = "would reseal"
	}
	fmt.Fprintf(w, "storage: %s, sealing key id %s\n", st, st.KeyID())
	for _, p := range r.Resealed {
		fmt.Fprintf(w, "%s: %s\n", verb, p)
	}
	if verbose {
		for _, p := range r.Current {
			fmt.Fprintf(w, "current: %s\n", p)
		}
		for _, p := range r.Skipped {
			fmt.Fprintf(w, "skipped: %s\n", p)
		}
	}
	for _, f := range r.Failed {
		fmt.Fprintf(w, "failed: %s: %v\n", f.Path, f.Err)
	}
	fmt.Fprintf(w, "%s %d, already current %d, skipped %d, failed %d\n",
		verb, len(r.Resealed), len(r.Current), len(r.Skipped), len(r.Failed))
}
