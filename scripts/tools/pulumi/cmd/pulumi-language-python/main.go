// pulumi-language-python: a small Python language host for the Pulumi CLI, written for callplane.
//
// Why it exists: Pulumi's own language host lives in a separate Go module
// (github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3) that has no tags and that the
// Go module proxy reachable here does not serve, while the CLI (pkg/v3) and the SDK (sdk/v3) are
// served. This host re-implements the part of the LanguageRuntime gRPC service that `pulumi
// preview/up/destroy/refresh/install/about` need, on top of the upstream sdk/v3 packages: the
// python/toolchain package does the real work (pip / uv / poetry virtualenvs), and the Python side
// is the upstream `pulumi-language-python-exec` shim shipped in the sdk/v3 module, which must sit
// next to this binary (or be given with -use-executor).
//
// Not implemented (answered Unimplemented, which the engine tolerates or reports): code generation
// (`pulumi convert`, `pulumi new` templates), `pulumi package` packing/linking, RunPlugin (Python
// *plugins*, not programs), typechecker runs, and plugin discovery from installed pulumi-* packages
// (GetRequiredPackages answers "none"; callplane uses only dynamic providers).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/pulumi/pulumi/sdk/v3/go/common/util/cmdutil"
	"github.com/pulumi/pulumi/sdk/v3/go/common/util/logging"
	"github.com/pulumi/pulumi/sdk/v3/go/common/util/rpcutil"
	"github.com/pulumi/pulumi/sdk/v3/go/common/version"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"github.com/pulumi/pulumi/sdk/v3/python/toolchain"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
)

// exitCodeUserActionable is what the exec shim exits with after it has already shown the error.
const exitCodeUserActionable = 32

func main() {
	tracing := flag.String("tracing", "", "Zipkin-compatible tracing endpoint (passed to the program)")
	executor := flag.String("use-executor", "", "path of pulumi-language-python-exec (default: next to this binary)")
	// Older engines passed runtime options as flags; newer ones send them in ProgramInfo.Options.
	virtualenv := flag.String("virtualenv", "", "virtualenv (relative to the project root)")
	tc := flag.String("toolchain", "", "pip, uv or poetry")
	flag.String("root", "", "project root (ignored; taken from each request)")
	flag.String("typechecker", "", "ignored")
	flag.Parse()
	logging.InitLogging(false, 0, false)

	execPath := *executor
	if execPath == "" {
		self, err := os.Executable()
		if err != nil {
			cmdutil.Exit(fmt.Errorf("locating this executable: %w", err))
		}
		execPath = filepath.Join(filepath.Dir(self), "pulumi-language-python-exec")
	}
	if _, err := os.Stat(execPath); err != nil {
		cmdutil.Exit(fmt.Errorf("missing executor %s: %w", execPath, err))
	}

	h := &host{exec: execPath, tracing: *tracing, flagVenv: *virtualenv, flagToolchain: *tc}
	if args := flag.Args(); len(args) > 0 {
		h.engine = args[0]
	}
	handle, err := rpcutil.ServeWithOptions(rpcutil.ServeOptions{
		Init: func(s *grpc.Server) error { pulumirpc.RegisterLanguageRuntimeServer(s, h); return nil },
	})
	if err != nil {
		cmdutil.Exit(fmt.Errorf("starting the language host gRPC server: %w", err))
	}
	fmt.Printf("%d\n", handle.Port) // the engine reads the port from our first stdout line
	if err := <-handle.Done; err != nil {
		cmdutil.Exit(fmt.Errorf("language host stopped serving: %w", err))
	}
}

type host struct {
	pulumirpc.UnimplementedLanguageRuntimeServer
	mu                      sync.Mutex
	exec, tracing, engine   string
	flagVenv, flagToolchain string
}

func (h *host) Handshake(_ context.Context, req *pulumirpc.LanguageHandshakeRequest) (
	*pulumirpc.LanguageHandshakeResponse, error,
) {
	h.mu.Lock()
	h.engine = req.GetEngineAddress()
	h.mu.Unlock()
	return &pulumirpc.LanguageHandshakeResponse{}, nil
}

func (h *host) GetPluginInfo(context.Context, *emptypb.Empty) (*pulumirpc.PluginInfo, error) {
	return &pulumirpc.PluginInfo{Version: version.Version}, nil
}

// resolve picks the toolchain from Pulumi.yaml's runtime options (toolchain, virtualenv).
func (h *host) resolve(info *pulumirpc.ProgramInfo) (toolchain.Toolchain, error) {
	opts := toolchain.PythonOptions{
		Root: info.GetRootDirectory(), ProgramDir: info.GetProgramDirectory(),
		Virtualenv: h.flagVenv, Toolchain: toolchain.Auto,
	}
	name := h.flagToolchain
	if o := info.GetOptions().AsMap(); o != nil {
		if v, ok := o["virtualenv"].(string); ok {
			opts.Virtualenv = v
		}
		if v, ok := o["toolchain"].(string); ok {
			name = v
		}
	}
	switch name {
	case "", "auto":
		// Auto: uv.lock -> uv, poetry.lock -> poetry, else pip (with the virtualenv option, if any).
	case "pip":
		opts.Toolchain = toolchain.Pip
	case "uv":
		opts.Toolchain = toolchain.Uv
	case "poetry":
		opts.Toolchain = toolchain.Poetry
	default:
		return nil, fmt.Errorf("unsupported Python toolchain %q (want pip, uv or poetry)", name)
	}
	return toolchain.ResolveToolchain(opts)
}

func (h *host) GetRequiredPlugins(context.Context, *pulumirpc.GetRequiredPluginsRequest) (
	*pulumirpc.GetRequiredPluginsResponse, error,
) {
	return &pulumirpc.GetRequiredPluginsResponse{}, nil
}

func (h *host) GetRequiredPackages(context.Context, *pulumirpc.GetRequiredPackagesRequest) (
	*pulumirpc.GetRequiredPackagesResponse, error,
) {
	return &pulumirpc.GetRequiredPackagesResponse{}, nil
}

func (h *host) RuntimeOptionsPrompts(context.Context, *pulumirpc.RuntimeOptionsRequest) (
	*pulumirpc.RuntimeOptionsResponse, error,
) {
	return &pulumirpc.RuntimeOptionsResponse{}, nil
}

// Run starts `python pulumi-language-python-exec --monitor ... PROGRAM ARGS` in the project's
// virtualenv and waits for it; the program's output goes to our stdout/stderr, which the engine shows.
func (h *host) Run(ctx context.Context, req *pulumirpc.RunRequest) (*pulumirpc.RunResponse, error) {
	info := req.GetInfo()
	tc, err := h.resolve(info)
	if err != nil {
		return nil, err
	}
	// Creates the virtualenv (and, for pip, installs requirements.txt) when it is missing, as upstream does.
	if err := tc.EnsureVenv(ctx, info.GetProgramDirectory(), false, true, os.Stdout, os.Stderr); err != nil {
		return &pulumirpc.RunResponse{Error: err.Error()}, nil
	}
	program := req.GetProgram() //nolint:staticcheck // the engine still fills it in
	if info.GetProgramDirectory() != "" {
		entry := info.GetEntryPoint()
		if entry == "" {
			entry = "."
		}
		program = filepath.Join(info.GetProgramDirectory(), entry)
	}
	if program == "" {
		program = "."
	}
	h.mu.Lock()
	engine := h.engine
	h.mu.Unlock()

	args := []string{h.exec}
	add := func(k, v string) {
		if v != "" {
			args = append(args, "--"+k, v)
		}
	}
	add("monitor", req.GetMonitorAddress())
	add("engine", engine)
	add("project", req.GetProject())
	add("stack", req.GetStack())
	add("pwd", req.GetPwd())
	add("dry_run", strconv.FormatBool(req.GetDryRun()))
	add("parallel", strconv.Itoa(int(req.GetParallel())))
	add("tracing", h.tracing)
	add("organization", req.GetOrganization())
	add("root_directory", info.GetRootDirectory())
	args = append(args, program)
	args = append(args, req.GetArgs()...)

	cmd, err := tc.Command(ctx, args...)
	if err != nil {
		return &pulumirpc.RunResponse{Error: err.Error()}, nil
	}
	config := req.GetConfig()
	if config == nil {
		config = map[string]string{} // the SDK expects a JSON object, not null
	}
	cfg, err := json.Marshal(config)
	if err != nil {
		return nil, err
	}
	keys := req.GetConfigSecretKeys()
	if keys == nil {
		keys = []string{}
	}
	secretKeys, err := json.Marshal(keys)
	if err != nil {
		return nil, err
	}
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	cmd.Env = append(cmd.Env, "PULUMI_CONFIG="+string(cfg), "PULUMI_CONFIG_SECRET_KEYS="+string(secretKeys))
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			if exitErr.ExitCode() == exitCodeUserActionable {
				return &pulumirpc.RunResponse{Bail: true}, nil
			}
			return &pulumirpc.RunResponse{
				Error: fmt.Sprintf("Program exited with non-zero exit code: %d", exitErr.ExitCode()),
			}, nil
		}
		return &pulumirpc.RunResponse{Error: fmt.Sprintf("could not run the Python executor: %v", err)}, nil
	}
	return &pulumirpc.RunResponse{}, nil
}

// streamWriter forwards install output to the CLI (`pulumi install`).
type streamWriter struct {
	srv    grpc.ServerStreamingServer[pulumirpc.InstallDependenciesResponse]
	stderr bool
}

func (w streamWriter) Write(p []byte) (int, error) {
	msg := &pulumirpc.InstallDependenciesResponse{}
	b := append([]byte(nil), p...)
	if w.stderr {
		msg.Stderr = b
	} else {
		msg.Stdout = b
	}
	if err := w.srv.Send(msg); err != nil {
		return 0, err
	}
	return len(p), nil
}

var _ io.Writer = streamWriter{}

func (h *host) InstallDependencies(req *pulumirpc.InstallDependenciesRequest,
	srv grpc.ServerStreamingServer[pulumirpc.InstallDependenciesResponse],
) error {
	tc, err := h.resolve(req.GetInfo())
	if err != nil {
		return err
	}
	dir := req.GetInfo().GetProgramDirectory()
	if dir == "" {
		dir = req.GetDirectory() //nolint:staticcheck
	}
	return tc.InstallDependencies(srv.Context(), dir, req.GetUseLanguageVersionTools(), true,
		streamWriter{srv: srv}, streamWriter{srv: srv, stderr: true})
}

func (h *host) About(ctx context.Context, req *pulumirpc.AboutRequest) (*pulumirpc.AboutResponse, error) {
	tc, err := h.resolve(req.GetInfo())
	if err != nil {
		return nil, err
	}
	about, err := tc.About(ctx)
	if err != nil {
		return nil, err
	}
	return &pulumirpc.AboutResponse{
		Executable: about.PythonExecutable,
		Version:    about.PythonVersion.String(),
	}, nil
}

func (h *host) GetProgramDependencies(ctx context.Context, req *pulumirpc.GetProgramDependenciesRequest) (
	*pulumirpc.GetProgramDependenciesResponse, error,
) {
	tc, err := h.resolve(req.GetInfo())
	if err != nil {
		return nil, err
	}
	pkgs, err := tc.ListPackages(ctx, req.GetTransitiveDependencies())
	if err != nil {
		return nil, err
	}
	resp := &pulumirpc.GetProgramDependenciesResponse{}
	for _, p := range pkgs {
		resp.Dependencies = append(resp.Dependencies, &pulumirpc.DependencyInfo{Name: p.Name, Version: p.Version})
	}
	return resp, nil
}
