// The interpreter behind a go code context. It runs *inside the sandbox*: a small sh
// launcher (see GoDriver in drivers/__init__.py) builds this file with the sandbox's own
// `go` (>= 1.19) in a scratch directory of the context and runs it as
//   <scratch>/driver <token> <scratch>
// in the context's working directory. It needs nothing but `go` and the standard library.
//
// Cells follow a Go notebook's rules: each cell becomes a whole program, built and run in a
// fresh process. Top-level declarations (import, func, method, type, var, const) are kept
// and put into every later program, a new declaration of a name replacing the old one; the
// other statements of a cell become that program's `main` (a cell may also write its own
// `func main`, or put statements after a `%%` line). Values therefore never survive a cell;
// global variables are initialised again in every run. A `package main` line is accepted.
// As goimports would, an import no longer used is left out of the program, and a standard
// library package used without its import is imported. Declarations are kept only once
// their cell compiled.
//
// Requests arrive on stdin, one per line: `R <seq> <base64 of the code>` and `I <seq>`
// (interrupt cell <seq>; the server repeats it until the cell ends): SIGINT to the build or
// the program and every process below it, SIGKILL when that did not end them in a second.
// The program's stdin is /dev/null; its output goes to fd 1 and 2 unchanged. The driver's
// messages are lines `\x1e<token>|<json>`: `ready`, `error`, `done` on stdout and `sync`
// (all the cell's stderr came before it) on stderr. A compile error is an `error` whose
// lines name the cell and line (`cell3.go:2:5: undefined: x`).

package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/scanner"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

var (
	mark     string
	scratch  string
	outLock  sync.Mutex
	requests = make(chan request, 16)

	stateLock   sync.Mutex
	runningSeq  = -1
	interrupted bool
	interrupts  int
	current     *exec.Cmd

	kept      []declaration // every declaration kept so far, in order
	cellCount int
	stdPaths  map[string][]string // package name -> import paths in the standard library
)

type request struct {
	seq  int
	code string
}

// A top-level declaration of a cell: its source, where it came from, and the names it
// declares (a later declaration of any of them replaces it).
type declaration struct {
	keys   []string
	source string
	file   string
	line   int
	column int
	path   string // imports only: the import path
	name   string // imports only: the package name it is used by ("" when guessed)
}

func main() {
	mark = "\x1e" + argument(1, "0") + "|"
	scratch = argument(2, "")
	if scratch != "" {
		defer os.RemoveAll(scratch)
	}
	go read()
	send(os.Stdout, map[string]any{"ev": "ready", "pid": os.Getpid(), "impl": "go",
		"version": goVersion(), "scratch": scratch})
	for req := range requests {
		cellCount++
		runCell(req.seq, req.code)
		os.Stdout.Sync()
		send(os.Stderr, map[string]any{"ev": "sync", "seq": req.seq})
		send(os.Stdout, map[string]any{"ev": "done", "seq": req.seq, "count": cellCount})
	}
}

func argument(index int, fallback string) string {
	if len(os.Args) > index {
		return os.Args[index]
	}
	return fallback
}

func goVersion() string {
	out, err := exec.Command("go", "env", "GOVERSION").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// --- requests ------------------------------------------------------------------------------

func read() {
	lines := bufio.NewReaderSize(os.Stdin, 1<<16)
	for {
		line, err := lines.ReadString('\n')
		line = strings.TrimRight(line, "\n")
		parts := strings.SplitN(line, " ", 3)
		if len(parts) == 3 && parts[0] == "R" {
			seq, convErr := strconv.Atoi(parts[1])
			code, decodeErr := base64.StdEncoding.DecodeString(parts[2])
			if convErr == nil && decodeErr == nil {
				requests <- request{seq, string(code)}
			}
		} else if len(parts) == 2 && parts[0] == "I" {
			if seq, convErr := strconv.Atoi(parts[1]); convErr == nil {
				interrupt(seq)
			}
		}
		if err != nil {
			break
		}
	}
	// End of input: the server ends this interpreter (a running cell goes with it).
	stateLock.Lock()
	if current != nil && current.Process != nil {
		current.Process.Kill()
	}
	stateLock.Unlock()
	if scratch != "" {
		os.RemoveAll(scratch)
	}
	os.Exit(0)
}

func interrupt(seq int) {
	stateLock.Lock()
	defer stateLock.Unlock()
	if seq != runningSeq {
		return
	}
	interrupted = true
	interrupts++
	if current == nil || current.Process == nil {
		return
	}
	signal := syscall.SIGINT
	if interrupts > 4 { // the server repeats every 0.25 s: SIGINT did not end it
		signal = syscall.SIGKILL
	}
	// The build or the program and whatever it started stay in the driver's process group,
	// so that the server's SIGKILL to the group, when the context is deleted, ends them all;
	// an interrupt is for them alone, found through /proc.
	for _, pid := range descendants(current.Process.Pid) {
		syscall.Kill(pid, signal)
	}
}

// descendants: root and every process below it, parents first.
func descendants(root int) []int {
	children := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, entry := range entries {
		pid, err := strconv.Atoi(entry.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + entry.Name() + "/stat")
		if err != nil {
			continue
		}
		text := string(stat)
		fields := strings.Fields(text[strings.LastIndexByte(text, ')')+1:])
		if len(fields) < 2 {
			continue
		}
		if parent, err := strconv.Atoi(fields[1]); err == nil {
			children[parent] = append(children[parent], pid)
		}
	}
	found := []int{root}
	for i := 0; i < len(found); i++ {
		found = append(found, children[found[i]]...)
	}
	return found
}

// run starts cmd and waits for it; false when it was interrupted.
func run(cmd *exec.Cmd) (error, bool) {
	stateLock.Lock()
	if interrupted {
		stateLock.Unlock()
		return nil, false
	}
	err := cmd.Start()
	if err != nil {
		stateLock.Unlock()
		return err, true
	}
	current = cmd
	stateLock.Unlock()
	err = cmd.Wait()
	stateLock.Lock()
	current = nil
	stopped := interrupted
	stateLock.Unlock()
	return err, !stopped
}

// --- cells -----------------------------------------------------------------------------------

func runCell(seq int, code string) {
	stateLock.Lock()
	runningSeq, interrupted, interrupts = seq, false, 0
	stateLock.Unlock()
	defer func() {
		stateLock.Lock()
		runningSeq = -1
		stateLock.Unlock()
	}()

	file := fmt.Sprintf("cell%d.go", cellCount)
	decls, body, hasMain, problem := split(code, file)
	if problem != nil {
		sendError("CompileError", problem[0], problem)
		return
	}
	binary := filepath.Join(scratch, "cell")
	dropped := map[string]bool{} // imports the compiler called unused
	added := map[string]string{} // package name -> standard import added for it
	var failure []byte
	for attempt := 0; attempt < 4; attempt++ {
		program := assemble(decls, body, hasMain, dropped, added)
		if err := os.WriteFile(filepath.Join(scratch, "main.go"), []byte(program), 0o600); err != nil {
			sendError("CompileError", err.Error(), []string{err.Error()})
			return
		}
		build := exec.Command("go", "build", "-o", binary, "main.go")
		build.Dir = scratch
		var output bytes.Buffer
		build.Stdout = &output
		build.Stderr = &output
		err, finished := run(build)
		if !finished {
			sendInterrupted()
			return
		}
		if err == nil {
			failure = nil
			break
		}
		failure = output.Bytes()
		if !retry(failure, dropped, added, decls, body) {
			break
		}
	}
	if failure != nil {
		lines := compileLines(failure)
		sendError("CompileError", lines[0], lines)
		return
	}
	keep(decls, added)
	if len(body) == 0 && !hasMain {
		return // declarations only: nothing to run
	}
	cmd := exec.Command(binary)
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr
	err, finished := run(cmd)
	if !finished {
		sendInterrupted()
		return
	}
	if err != nil {
		text := err.Error()
		if exit, ok := err.(*exec.ExitError); ok && exit.ExitCode() >= 0 {
			text = fmt.Sprintf("exit status %d", exit.ExitCode())
		}
		sendError("ExitError", text, []string{text})
	}
}

// retry reads a failed build's messages for what goimports would have fixed: an import
// that is not used (left out next time) or a standard package used without its import
// (imported next time). False when there is nothing to fix.
func retry(output []byte, dropped map[string]bool, added map[string]string,
	decls []declaration, body []chunk) bool {
	unused, missing := compileProblems(output)
	changed := false
	for path := range unused {
		if !dropped[path] {
			dropped[path] = true
			changed = true
		}
	}
	if len(missing) == 0 {
		return changed
	}
	used := usedNames(append(append([]declaration{}, kept...), decls...), body)
	for _, name := range missing {
		if added[name] != "" || !used[name] {
			continue
		}
		if path := stdImport(name); path != "" {
			added[name] = path
			changed = true
		}
	}
	return changed
}

var (
	unusedOld = regexp.MustCompile(`imported and not used: "([^"]+)"`)
	unusedNew = regexp.MustCompile(`"([^"]+)" imported (?:and|but) not used`)
	undefined = regexp.MustCompile(`undefined: ([A-Za-z_][A-Za-z0-9_]*)$`)
)

func compileProblems(output []byte) (map[string]bool, []string) {
	unused := map[string]bool{}
	var names []string
	for _, line := range strings.Split(string(output), "\n") {
		for _, pattern := range []*regexp.Regexp{unusedOld, unusedNew} {
			if found := pattern.FindStringSubmatch(line); found != nil {
				unused[found[1]] = true
			}
		}
		if found := undefined.FindStringSubmatch(strings.TrimSpace(line)); found != nil {
			names = append(names, found[1])
		}
	}
	return unused, names
}

// The compiler's messages, without its `# command-line-arguments` header.
func compileLines(output []byte) []string {
	var lines []string
	for _, line := range strings.Split(strings.TrimSpace(string(output)), "\n") {
		if strings.HasPrefix(line, "# ") || strings.TrimSpace(line) == "" {
			continue
		}
		lines = append(lines, strings.TrimPrefix(line, "./"))
	}
	if len(lines) == 0 {
		lines = []string{"go build failed"}
	}
	return lines
}

// --- splitting a cell ---------------------------------------------------------------------

var packageLine = regexp.MustCompile(`^\s*package\s+main\s*(//.*)?$`)

// split finds a cell's top-level declarations and the statements that make its main.
func split(code, file string) ([]declaration, []chunk, bool, []string) {
	lines := strings.Split(code, "\n")
	for i, line := range lines {
		if packageLine.MatchString(line) {
			lines[i] = ""
			break
		}
		if strings.TrimSpace(line) != "" && !strings.HasPrefix(strings.TrimSpace(line), "//") {
			break
		}
	}
	top := lines
	var body []chunk
	for i, line := range lines {
		if strings.TrimSpace(line) == "%%" {
			top = lines[:i]
			body = append(body, chunk{source: strings.Join(lines[i+1:], "\n"), line: i + 2, column: 1})
			break
		}
	}
	decls, statements, problem := topLevel(strings.Join(top, "\n"), file)
	if problem != nil {
		return nil, nil, false, problem
	}
	body = append(statements, body...)
	hasMain := false
	for _, decl := range decls {
		for _, key := range decl.keys {
			if key == "func main" {
				hasMain = true
			}
		}
	}
	if hasMain && len(body) > 0 {
		return nil, nil, false, []string{fmt.Sprintf(
			"%s: this cell has both a func main and statements outside it; put the "+
				"statements inside main", file)}
	}
	for i := range body {
		body[i].file = file
	}
	return decls, body, hasMain, nil
}

type chunk struct {
	source string
	line   int
	column int
	file   string
}

// topLevel splits source into declarations and statements at its top-level semicolons.
func topLevel(source, file string) ([]declaration, []chunk, []string) {
	if decls, err := parseDecls(source, 1, 1, file); err == nil {
		return decls, nil, nil
	}
	fset := token.NewFileSet()
	handle := fset.AddFile(file, -1, len(source))
	var scan scanner.Scanner
	var scanErrors []string
	scan.Init(handle, []byte(source), func(pos token.Position, msg string) {
		scanErrors = append(scanErrors, fmt.Sprintf("%s:%d:%d: %s", file, pos.Line, pos.Column, msg))
	}, 0)
	var decls []declaration
	var statements []chunk
	depth, start := 0, -1
	finish := func(end int) []string {
		if start < 0 {
			return nil
		}
		text := source[start:end]
		position := handle.Position(handle.Pos(start))
		start = -1
		if strings.TrimSpace(text) == "" {
			return nil
		}
		if isDeclaration(text) {
			found, err := parseDecls(text, position.Line, position.Column, file)
			if err == nil {
				decls = append(decls, found...)
				return nil
			}
			if !strings.HasPrefix(strings.TrimSpace(text), "func") {
				return []string{err.Error()}
			}
		}
		statements = append(statements, chunk{text, position.Line, position.Column, file})
		return nil
	}
	for {
		pos, tok, lit := scan.Scan()
		if tok == token.EOF {
			if problem := finish(len(source)); problem != nil {
				return nil, nil, problem
			}
			break
		}
		offset := handle.Offset(pos)
		if start < 0 && tok != token.SEMICOLON && tok != token.COMMENT {
			start = offset
		}
		switch tok {
		case token.LPAREN, token.LBRACE, token.LBRACK:
			depth++
		case token.RPAREN, token.RBRACE, token.RBRACK:
			depth--
		case token.SEMICOLON:
			if depth == 0 {
				end := offset
				if lit == ";" {
					end++
				}
				if problem := finish(end); problem != nil {
					return nil, nil, problem
				}
			}
		}
	}
	if len(scanErrors) > 0 {
		return nil, nil, scanErrors
	}
	return decls, statements, nil
}

func isDeclaration(text string) bool {
	word := strings.Fields(text)
	if len(word) == 0 {
		return false
	}
	first := word[0]
	for _, keyword := range []string{"import", "type", "const", "var", "func"} {
		if first == keyword || strings.HasPrefix(first, keyword+"(") ||
			(keyword == "func" && strings.HasPrefix(first, "func(")) {
			return true
		}
	}
	return false
}

// parseDecls reads source (which starts at line:column of the cell) as declarations only.
func parseDecls(source string, line, column int, file string) ([]declaration, error) {
	const header = "package main;"
	fset := token.NewFileSet()
	parsed, err := parser.ParseFile(fset, file, header+source, parser.ParseComments)
	if err != nil {
		return nil, relocate(err, line, column, len(header))
	}
	var decls []declaration
	text := header + source
	for _, decl := range parsed.Decls {
		from := fset.Position(decl.Pos())
		if gen, ok := decl.(*ast.GenDecl); ok && gen.Doc != nil {
			from = fset.Position(gen.Doc.Pos())
		} else if fn, ok := decl.(*ast.FuncDecl); ok && fn.Doc != nil {
			from = fset.Position(fn.Doc.Pos())
		}
		to := fset.Position(decl.End())
		found := declaration{source: text[from.Offset:to.Offset], file: file}
		found.line, found.column = cellPosition(from, line, column, len(header))
		switch d := decl.(type) {
		case *ast.FuncDecl:
			key := "func " + d.Name.Name
			if d.Recv != nil && len(d.Recv.List) > 0 {
				key = "method " + receiverName(d.Recv.List[0].Type) + "." + d.Name.Name
			}
			found.keys = []string{key}
			decls = append(decls, found)
		case *ast.GenDecl:
			if d.Tok == token.IMPORT {
				for _, spec := range d.Specs {
					imp := spec.(*ast.ImportSpec)
					path, _ := strconv.Unquote(imp.Path.Value)
					one := declaration{path: path, file: file}
					one.line, one.column = cellPosition(fset.Position(imp.Pos()), line, column, len(header))
					one.source = "import " + text[fset.Position(imp.Pos()).Offset:fset.Position(imp.End()).Offset]
					name := ""
					if imp.Name != nil {
						name = imp.Name.Name
					}
					one.name = name
					one.keys = []string{"import " + name + " " + path}
					decls = append(decls, one)
				}
				continue
			}
			for _, spec := range d.Specs {
				switch s := spec.(type) {
				case *ast.TypeSpec:
					found.keys = append(found.keys, "name "+s.Name.Name)
				case *ast.ValueSpec:
					for _, name := range s.Names {
						if name.Name != "_" {
							found.keys = append(found.keys, "name "+name.Name)
						}
					}
				}
			}
			decls = append(decls, found)
		}
	}
	return decls, nil
}

func receiverName(expr ast.Expr) string {
	switch e := expr.(type) {
	case *ast.StarExpr:
		return receiverName(e.X)
	case *ast.IndexExpr:
		return receiverName(e.X)
	case *ast.IndexListExpr:
		return receiverName(e.X)
	case *ast.Ident:
		return e.Name
	}
	return "?"
}

func cellPosition(at token.Position, line, column, header int) (int, int) {
	// The header shares the first line: columns there shift by its length.
	if at.Line == 1 {
		return line, column + at.Column - 1 - header
	}
	return line + at.Line - 1, at.Column
}

func relocate(err error, line, column, header int) error {
	list, ok := err.(scanner.ErrorList)
	if !ok || len(list) == 0 {
		return err
	}
	first := list[0]
	l, c := cellPosition(first.Pos, line, column, header)
	return fmt.Errorf("%s:%d:%d: %s", first.Pos.Filename, l, c, first.Msg)
}

// --- the program ----------------------------------------------------------------------------

// keep records the declarations of a cell that compiled (and the imports added for it).
func keep(decls []declaration, added map[string]string) {
	for _, name := range sortedKeys(added) {
		decls = append(decls, declaration{path: added[name], source: "import " +
			strconv.Quote(added[name]), keys: []string{"import  " + added[name]}})
	}
	for _, decl := range decls {
		if len(decl.keys) == 1 && decl.keys[0] == "func main" {
			continue // a cell's own main runs once
		}
		kept = append(without(kept, []declaration{decl}), decl)
	}
}

// without: the declarations of `from` that declare none of the names `decls` declare.
func without(from, decls []declaration) []declaration {
	replaced := map[string]bool{}
	for _, decl := range decls {
		for _, key := range decl.keys {
			replaced[key] = true
		}
	}
	var rest []declaration
	for _, old := range from {
		overlap := false
		for _, key := range old.keys {
			overlap = overlap || replaced[key]
		}
		if !overlap {
			rest = append(rest, old)
		}
	}
	return rest
}

func sortedKeys(values map[string]string) []string {
	var keys []string
	for key := range values {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	return keys
}

// assemble writes the program: imports, the kept declarations not replaced by this
// cell's, this cell's, and main. Each piece carries a //line directive, so the compiler
// names the cell and line it came from.
func assemble(decls []declaration, body []chunk, hasMain bool, dropped map[string]bool,
	added map[string]string) string {
	all := append(without(kept, decls), decls...)
	used := usedNames(all, body)

	var program strings.Builder
	program.WriteString("package main\n\n")
	for _, name := range sortedKeys(added) {
		fmt.Fprintf(&program, "import %q\n", added[name])
	}
	for _, decl := range all {
		if decl.path == "" {
			continue
		}
		if dropped[decl.path] {
			continue
		}
		if decl.name != "_" && decl.name != "." && !used[importName(decl)] {
			continue
		}
		writePiece(&program, decl.file, decl.line, decl.column, decl.source)
	}
	for _, decl := range all {
		if decl.path != "" {
			continue
		}
		writePiece(&program, decl.file, decl.line, decl.column, decl.source)
	}
	if !hasMain {
		program.WriteString("\nfunc main() {\n")
		for _, piece := range body {
			writePiece(&program, piece.file, piece.line, piece.column, piece.source)
		}
		program.WriteString("\n}\n")
	}
	return program.String()
}

func writePiece(program *strings.Builder, file string, line, column int, source string) {
	if file != "" && line > 0 {
		if column < 1 {
			column = 1
		}
		fmt.Fprintf(program, "\n//line %s:%d:%d\n", file, line, column)
	} else {
		program.WriteString("\n")
	}
	program.WriteString(source)
	program.WriteString("\n")
}

// usedNames: the identifiers used as `name.X` anywhere in the program, for deciding which
// kept imports it still needs.
func usedNames(decls []declaration, body []chunk) map[string]bool {
	used := map[string]bool{}
	var sources []string
	for _, decl := range decls {
		if decl.path == "" {
			sources = append(sources, decl.source)
		}
	}
	for _, piece := range body {
		sources = append(sources, piece.source)
	}
	fset := token.NewFileSet()
	for _, source := range sources {
		var scan scanner.Scanner
		handle := fset.AddFile("", -1, len(source))
		scan.Init(handle, []byte(source), nil, 0)
		previous := ""
		previousTok := token.ILLEGAL
		for {
			_, tok, lit := scan.Scan()
			if tok == token.EOF {
				break
			}
			if tok == token.PERIOD && previousTok == token.IDENT {
				used[previous] = true
			}
			previous, previousTok = lit, tok
		}
	}
	return used
}

var versionSuffix = regexp.MustCompile(`^v[0-9]+$`)

// importName: the name a package is used by: its alias, else what goimports assumes from
// its path (the last element, skipping a major version, without a go- prefix or -go suffix).
func importName(decl declaration) string {
	if decl.name != "" {
		return decl.name
	}
	parts := strings.Split(decl.path, "/")
	name := parts[len(parts)-1]
	if versionSuffix.MatchString(name) && len(parts) > 1 {
		name = parts[len(parts)-2]
	}
	name = strings.TrimPrefix(name, "go-")
	name = strings.TrimSuffix(strings.TrimSuffix(name, "-go"), ".go")
	return strings.Map(func(r rune) rune {
		if r == '-' || r == '.' {
			return '_'
		}
		return r
	}, name)
}

// preferred: the packages cells use most (no `go list` needed for them), and for names the
// standard library has twice, the one meant more often.
var preferred = map[string]string{"rand": "math/rand", "template": "text/template",
	"scanner": "text/scanner", "pprof": "runtime/pprof", "fmt": "fmt", "os": "os",
	"strings": "strings", "strconv": "strconv", "time": "time", "math": "math",
	"sort": "sort", "errors": "errors", "bytes": "bytes", "bufio": "bufio", "io": "io",
	"sync": "sync", "json": "encoding/json", "http": "net/http", "filepath": "path/filepath",
	"regexp": "regexp", "context": "context", "atomic": "sync/atomic", "unicode": "unicode",
	"utf8": "unicode/utf8", "big": "math/big", "exec": "os/exec", "log": "log",
	"base64": "encoding/base64", "hex": "encoding/hex", "sha256": "crypto/sha256"}

// stdImport: the standard library package a name most likely means, or "".
func stdImport(name string) string {
	if path, ok := preferred[name]; ok {
		return path
	}
	if stdPaths == nil {
		stdPaths = map[string][]string{}
		out, err := exec.Command("go", "list", "-f", "{{.Name}} {{.ImportPath}}", "std").Output()
		if err == nil {
			for _, line := range strings.Split(string(out), "\n") {
				fields := strings.Fields(line)
				if len(fields) != 2 || strings.Contains(fields[1], "internal") ||
					strings.HasPrefix(fields[1], "vendor/") || fields[0] == "main" {
					continue
				}
				stdPaths[fields[0]] = append(stdPaths[fields[0]], fields[1])
			}
		}
	}
	paths := stdPaths[name]
	if len(paths) == 0 {
		return ""
	}
	sort.Slice(paths, func(i, j int) bool {
		if len(paths[i]) != len(paths[j]) {
			return len(paths[i]) < len(paths[j])
		}
		return paths[i] < paths[j]
	})
	return paths[0]
}

// --- messages -------------------------------------------------------------------------------

func sendInterrupted() {
	sendError("KeyboardInterrupt", "", []string{"KeyboardInterrupt"})
}

func sendError(ename, evalue string, traceback []string) {
	send(os.Stdout, map[string]any{"ev": "error", "ename": ename, "evalue": evalue,
		"traceback": traceback})
}

func send(stream *os.File, message map[string]any) {
	data, _ := json.Marshal(message)
	outLock.Lock()
	defer outLock.Unlock()
	stream.Write([]byte(mark + string(data) + "\n"))
}
