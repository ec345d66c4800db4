// Command frugal-gitops reads a Kubernetes object the way two GitOps tools do, so that tests can
// check what they would make of a TrainingJob or TrainingBudget:
//
//	frugal-gitops argocd SCRIPT.lua OBJECT.json   an Argo CD resource health script, run with
//	                                             gopher-lua (the Lua 5.1 Argo CD embeds)
//	frugal-gitops kstatus OBJECT.json            kstatus's Compute (cli-utils), which Flux's
//	                                             health checks and `kstatus`-based waits use
//
// Each prints one JSON object, {"status": ..., "message": ...}, on stdout.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

// result is what both commands print.
type result struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

// The health statuses Argo CD accepts from a script; anything else reads as Unknown.
var argoStatuses = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true, "Suspended": true, "Missing": true, "Unknown": true,
}

// What Argo CD says when a script returns a status it does not know.
const invalidStatus = "Lua returned an invalid health status"

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "frugal-gitops:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	var (
		r   *result
		err error
	)
	switch {
	case len(args) == 3 && args[0] == "argocd":
		r, err = argocd(args[1], args[2])
	case len(args) == 2 && args[0] == "kstatus":
		r, err = kstatus(args[1])
	default:
		return fmt.Errorf("usage: frugal-gitops argocd SCRIPT.lua OBJECT.json | frugal-gitops kstatus OBJECT.json")
	}
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

// object reads a JSON object as the API machinery decodes one: whole numbers become int64,
// others float64, as in the objects Argo CD and Flux get from the API server.
func object(path string) (*unstructured.Unstructured, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(data); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return u, nil
}

func kstatus(path string) (*result, error) {
	u, err := object(path)
	if err != nil {
		return nil, err
	}
	res, err := status.Compute(u)
	if err != nil {
		return nil, err
	}
	return &result{Status: res.Status.String(), Message: res.Message}, nil
}

// argocd runs a health script as Argo CD's controller does: only the package, base and table
// libraries are open (no string, math or io: a script that needs them fails here and there
// alike), the script has one second, the object is the global `obj`, and the script's last
// return value must be a table whose `status` is one of Argo CD's health statuses.
func argocd(scriptPath, objectPath string) (*result, error) {
	script, err := os.ReadFile(scriptPath)
	if err != nil {
		return nil, err
	}
	u, err := object(objectPath)
	if err != nil {
		return nil, err
	}
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), Protect: true}, lua.LString(lib.name)); err != nil {
			return nil, fmt.Errorf("opening %s: %w", lib.name, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, u.Object))
	if err := l.DoString(string(script)); err != nil {
		return nil, fmt.Errorf("%s: %w", scriptPath, err)
	}
	ret, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return nil, fmt.Errorf("%s returned %s, not a table", scriptPath, l.Get(-1).Type())
	}
	r := &result{Status: luaString(ret.RawGetString("status")), Message: luaString(ret.RawGetString("message"))}
	if !argoStatuses[r.Status] {
		return &result{Status: "Unknown", Message: invalidStatus}, nil
	}
	return r, nil
}

// toLua converts a decoded JSON value into Lua: objects become tables keyed by name, arrays
// tables indexed from 1, numbers Lua numbers, and null nil (a field set to null reads as absent).
func toLua(l *lua.LState, v any) lua.LValue {
	switch v := v.(type) {
	case map[string]any:
		t := l.CreateTable(0, len(v))
		for k, item := range v {
			t.RawSetString(k, toLua(l, item))
		}
		return t
	case []any:
		t := l.CreateTable(len(v), 0)
		for _, item := range v {
			t.Append(toLua(l, item))
		}
		return t
	case string:
		return lua.LString(v)
	case bool:
		return lua.LBool(v)
	case int64:
		return lua.LNumber(v)
	case float64:
		return lua.LNumber(v)
	case json.Number:
		return lua.LString(v)
	}
	return lua.LNil
}

// luaString is a returned field as text: a string as it is, a number as Lua prints it, and
// anything else (nil, a table) as nothing.
func luaString(v lua.LValue) string {
	switch v := v.(type) {
	case lua.LString:
		return string(v)
	case lua.LNumber:
		return v.String()
	}
	return ""
}
