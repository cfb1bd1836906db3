// The interpreter behind a java code context. It runs *inside the sandbox* as a single-file
// source program (JDK >= 11, with the jdk.jshell module: the java next to the sandbox's
// `jshell`), started by launcher.sh as
//   java <scratch>/OpenSandboxJavaDriver.java <token> <scratch>
// in the context's working directory. Once running it removes its source and the scratch
// directory: it was compiled into memory.
//
// Cells are evaluated with the JShell API, in this JVM (local execution: no second JVM and
// no debugger connection, so the first cell comes sooner): a cell is split into snippets as
// jshell does, each evaluated in order; imports, variables, methods and classes persist, a
// re-declaration replaces the old one. The value of a trailing expression is the cell's
// result, rendered as toString() renders it. A snippet that does not compile, or that
// throws, ends the cell with an error and the snippets after it do not run.
//
// Requests arrive on stdin, one per line: `R <seq> <base64 of the code>` and `I <seq>`
// (interrupt cell <seq>; the server repeats it until the cell ends). A reader thread owns
// stdin, so an interrupt is seen while a cell runs: it stops the snippet (JShell's own stop:
// Thread.stop up to JDK 19, a check JShell compiles into user code from JDK 20) and
// interrupts the snippet's threads, so a sleep or a wait ends too. The shell and its state
// survive. User code sees an empty System.in.
//
// The user's output goes to fd 1 and 2 (UTF-8). The driver's messages are lines
// `\x1e<token>|<json>`: `ready`, `result`, `error`, `done` on stdout and `sync` (all the
// cell's stderr came before it) on stderr.

import java.io.BufferedOutputStream;
import java.io.BufferedReader;
import java.io.ByteArrayInputStream;
import java.io.FileDescriptor;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Comparator;
import java.util.List;
import java.util.Map;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.stream.Collectors;
import java.util.stream.Stream;

import jdk.jshell.Diag;
import jdk.jshell.EvalException;
import jdk.jshell.ExpressionSnippet;
import jdk.jshell.JShell;
import jdk.jshell.JShellException;
import jdk.jshell.Snippet;
import jdk.jshell.SnippetEvent;
import jdk.jshell.SourceCodeAnalysis;
import jdk.jshell.UnresolvedReferenceException;
import jdk.jshell.VarSnippet;
import jdk.jshell.execution.LocalExecutionControl;
import jdk.jshell.spi.ExecutionControl;
import jdk.jshell.spi.ExecutionControlProvider;
import jdk.jshell.spi.ExecutionEnv;

public class OpenSandboxJavaDriver {
    // What every context starts with: the imports jshell itself starts with, and printf.
    static final String PRELUDE = String.join("\n",
            "import java.io.*;", "import java.math.*;", "import java.net.*;",
            "import java.nio.file.*;", "import java.util.*;", "import java.util.concurrent.*;",
            "import java.util.function.*;", "import java.util.prefs.*;",
            "import java.util.regex.*;", "import java.util.stream.*;",
            "void printf(String format, Object... args) { System.out.printf(format, args); }");

    static String mark;
    static PrintStream out;
    static PrintStream err;
    static JShell shell;
    static final BlockingQueue<String[]> requests = new LinkedBlockingQueue<>();
    static volatile int running = -1;
    static volatile boolean interrupted;
    static ThreadGroup driverThreads;
    static int count;
    static final long FLUSH_INTERVAL_MS = 50;  // a partial line is written out after this long

    public static void main(String[] args) throws Exception {
        mark = "\u001e" + (args.length > 0 ? args[0] : "0") + "|";
        if (args.length > 1) {  // compiled into memory: nothing in it is needed any more
            remove(Paths.get(args[1]));
        }
        out = new PrintStream(new BufferedOutputStream(new FileOutputStream(FileDescriptor.out),
                1 << 16), true, "UTF-8");
        err = new PrintStream(new BufferedOutputStream(new FileOutputStream(FileDescriptor.err),
                1 << 16), true, "UTF-8");
        System.setOut(out);
        System.setErr(err);
        FileInputStream stdin = new FileInputStream(FileDescriptor.in);
        System.setIn(new ByteArrayInputStream(new byte[0]));
        driverThreads = Thread.currentThread().getThreadGroup();

        shell = JShell.builder()
                .executionEngine(new InProcess(), Map.of())
                .out(out).err(err).in(System.in)
                .build();
        String classpath = System.getenv("CLASSPATH");
        if (classpath != null) {
            for (String entry : classpath.split(java.io.File.pathSeparator)) {
                if (!entry.isEmpty()) shell.addToClasspath(entry);
            }
        }
        for (SnippetEvent event : evaluate(PRELUDE)) {
            if (event.status() == Snippet.Status.REJECTED) {
                send(out, "{\"ev\":\"fatal\",\"message\":" + json("the prelude does not compile: "
                        + event.snippet().source()) + "}");
                System.exit(1);
            }
        }

        Thread reader = new Thread(() -> read(stdin), "opensandbox-reader");
        reader.setDaemon(true);
        reader.start();
        Thread flusher = new Thread(OpenSandboxJavaDriver::flushNow, "opensandbox-flusher");
        flusher.setDaemon(true);
        flusher.start();
        send(out, "{\"ev\":\"ready\",\"pid\":" + ProcessHandle.current().pid()
                + ",\"impl\":\"jshell\",\"version\":" + json(Runtime.version().toString()) + "}");
        while (true) {
            String[] request = requests.take();
            if (request.length == 0) break;
            int seq = Integer.parseInt(request[0]);
            String code = new String(Base64.getDecoder().decode(request[1]), StandardCharsets.UTF_8);
            interrupted = false;
            running = seq;
            count++;
            try {
                runCell(code);
            } catch (Throwable error) {
                sendError("InternalError", String.valueOf(error), List.of(String.valueOf(error)));
            } finally {
                running = -1;
                System.out.flush();
                System.err.flush();
                send(err, "{\"ev\":\"sync\",\"seq\":" + seq + "}");
                send(out, "{\"ev\":\"done\",\"seq\":" + seq + ",\"count\":" + count + "}");
            }
        }
        shell.close();
        System.exit(0);
    }

    static void remove(Path directory) {
        try (Stream<Path> paths = Files.walk(directory)) {
            paths.sorted(Comparator.reverseOrder()).forEach(path -> path.toFile().delete());
        } catch (Exception error) {
            // already gone
        }
    }

    // Output a cell printed without a newline reaches the client while the cell runs.
    static void flushNow() {
        while (true) {
            try {
                Thread.sleep(FLUSH_INTERVAL_MS);
            } catch (InterruptedException error) {
                return;
            }
            if (running >= 0) {
                out.flush();
                err.flush();
            }
        }
    }

    // --- requests ---------------------------------------------------------------------------

    static void read(FileInputStream stdin) {
        try (BufferedReader lines = new BufferedReader(
                new InputStreamReader(stdin, StandardCharsets.UTF_8))) {
            String line;
            while ((line = lines.readLine()) != null) {
                String[] parts = line.split(" ", 3);
                if (parts[0].equals("R") && parts.length == 3) {
                    requests.add(new String[] {parts[1], parts[2]});
                } else if (parts[0].equals("I") && parts.length == 2
                        && parts[1].equals(String.valueOf(running))) {
                    interrupted = true;
                    shell.stop();
                }
            }
        } catch (Exception error) {
            // stdin is gone: as at its end
        }
        if (running >= 0) {
            System.exit(0);  // the server closes stdin only to end the interpreter
        }
        requests.add(new String[0]);
    }

    // --- cells ------------------------------------------------------------------------------

    static List<SnippetEvent> evaluate(String code) {
        List<SnippetEvent> all = new ArrayList<>();
        SourceCodeAnalysis analysis = shell.sourceCodeAnalysis();
        SourceCodeAnalysis.CompletionInfo info = analysis.analyzeCompletion(code);
        while (info.completeness().isComplete()) {
            all.addAll(shell.eval(info.source()));
            info = analysis.analyzeCompletion(info.remaining());
        }
        return all;
    }

    static void runCell(String code) {
        SourceCodeAnalysis analysis = shell.sourceCodeAnalysis();
        String result = null;
        SourceCodeAnalysis.CompletionInfo info = analysis.analyzeCompletion(code);
        while (info.completeness().isComplete()) {
            if (interrupted) {
                sendInterrupted();
                return;
            }
            result = null;
            for (SnippetEvent event : shell.eval(info.source())) {
                if (event.causeSnippet() != null) continue;  // an update of an older snippet
                if (interrupted) {
                    sendInterrupted();
                    return;
                }
                JShellException exception = event.exception();
                if (exception != null) {
                    sendException(exception);
                    return;
                }
                if (!event.status().isDefined()) {
                    sendCompileError(event.snippet());
                    return;
                }
                result = valueOf(event);
            }
            info = analysis.analyzeCompletion(info.remaining());
        }
        if (interrupted) {
            sendInterrupted();
            return;
        }
        if (info.completeness() != SourceCodeAnalysis.Completeness.EMPTY) {
            String rest = info.remaining().trim();
            sendError("IncompleteSourceException", rest, List.of("Incomplete input:", rest));
            return;
        }
        if (result != null) {
            send(out, "{\"ev\":\"result\",\"count\":" + count + ",\"data\":{\"text/plain\":"
                    + json(result) + "}}");
        }
    }

    // The text of an expression's value (null for a snippet that has none): toString() of
    // the value, as a notebook shows it, where jshell would quote strings and chars.
    static String valueOf(SnippetEvent event) {
        String value = event.value();
        Snippet snippet = event.snippet();
        if (value == null) return null;
        String type;
        switch (snippet.subKind()) {
            case VAR_VALUE_SUBKIND:
            case OTHER_EXPRESSION_SUBKIND:
                type = ((ExpressionSnippet) snippet).typeName();
                break;
            case TEMP_VAR_EXPRESSION_SUBKIND:
                type = ((VarSnippet) snippet).typeName();
                break;
            default:
                return null;
        }
        if (type.equals("void")) return null;
        boolean quoted = value.length() >= 2
                && (value.startsWith("\"") && value.endsWith("\"")
                    || value.startsWith("'") && value.endsWith("'"));
        if (quoted && (type.equals("String") || type.equals("java.lang.String")
                || type.equals("char") || type.equals("Character")
                || type.equals("java.lang.Character"))) {
            return unquote(value.substring(1, value.length() - 1));
        }
        return value;
    }

    static String unquote(String text) {
        StringBuilder plain = new StringBuilder(text.length());
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            if (c != '\\' || i + 1 >= text.length()) {
                plain.append(c);
                continue;
            }
            char next = text.charAt(++i);
            switch (next) {
                case 'b': plain.append('\b'); break;
                case 't': plain.append('\t'); break;
                case 'n': plain.append('\n'); break;
                case 'f': plain.append('\f'); break;
                case 'r': plain.append('\r'); break;
                case 'u':
                    if (i + 4 < text.length()) {
                        plain.append((char) Integer.parseInt(text.substring(i + 1, i + 5), 16));
                        i += 4;
                        break;
                    }
                    plain.append(next);
                    break;
                default:
                    if (next >= '0' && next <= '7') {
                        int end = i;
                        while (end < text.length() && end < i + 3
                                && text.charAt(end) >= '0' && text.charAt(end) <= '7') end++;
                        plain.append((char) Integer.parseInt(text.substring(i, end), 8));
                        i = end - 1;
                    } else {
                        plain.append(next);
                    }
            }
        }
        return plain.toString();
    }

    // --- errors -----------------------------------------------------------------------------

    static void sendInterrupted() {
        sendError("KeyboardInterrupt", "", List.of("KeyboardInterrupt"));
    }

    static void sendException(JShellException exception) {
        List<String> traceback = new ArrayList<>();
        if (exception instanceof UnresolvedReferenceException) {
            Snippet snippet = ((UnresolvedReferenceException) exception).getSnippet();
            String missing = shell.unresolvedDependencies((jdk.jshell.DeclarationSnippet) snippet)
                    .collect(Collectors.joining(", "));
            String message = "attempted to use " + snippet.source().trim()
                    + ", which cannot be invoked until " + missing + " is declared";
            traceback.add(message);
            sendError("UnresolvedReferenceException", message, traceback);
            return;
        }
        Throwable current = exception;
        String prefix = "";
        while (current != null) {
            String name = current instanceof EvalException
                    ? ((EvalException) current).getExceptionClassName()
                    : current.getClass().getName();
            String message = current.getMessage();
            traceback.add(prefix + name + (message != null ? ": " + message : ""));
            for (StackTraceElement frame : current.getStackTrace()) {
                String where = frame.getClassName();
                if (where.startsWith("jdk.jshell.") || where.startsWith("jdk.internal.")
                        || where.startsWith("java.lang.reflect.")) break;
                traceback.add("\tat " + frame);
            }
            current = current.getCause();
            prefix = "Caused by: ";
        }
        String message = exception.getMessage();
        sendError(exception.getClass().getSimpleName(), message != null ? message : "", traceback);
    }

    static void sendCompileError(Snippet snippet) {
        List<Diag> diagnostics = shell.diagnostics(snippet).collect(Collectors.toList());
        List<String> traceback = new ArrayList<>();
        List<String> messages = new ArrayList<>();
        String source = snippet.source();
        for (Diag diagnostic : diagnostics) {
            if (!diagnostic.isError()) continue;
            String message = diagnostic.getMessage(null);
            messages.add(message.split("\n", 2)[0]);
            long start = Math.max(0, diagnostic.getStartPosition());
            int lineStart = source.lastIndexOf('\n', (int) Math.min(start, source.length()) - 1) + 1;
            int lineEnd = source.indexOf('\n', lineStart);
            String line = source.substring(lineStart, lineEnd < 0 ? source.length() : lineEnd);
            traceback.add(line);
            traceback.add(" ".repeat((int) Math.max(0, start - lineStart)) + "^");
            for (String part : message.split("\n")) {
                if (!part.trim().startsWith("location:")) traceback.add(part);
            }
        }
        if (messages.isEmpty()) {
            String missing = snippet instanceof jdk.jshell.DeclarationSnippet
                    ? shell.unresolvedDependencies((jdk.jshell.DeclarationSnippet) snippet)
                            .collect(Collectors.joining(", "))
                    : "";
            String message = missing.isEmpty() ? "the snippet was not defined"
                    : "unresolved: " + missing;
            messages.add(message);
            traceback.add(source.trim());
            traceback.add(message);
        }
        sendError("CompilationException", String.join("; ", messages), traceback);
    }

    static void sendError(String ename, String evalue, List<String> traceback) {
        System.out.flush();
        System.err.flush();
        StringBuilder lines = new StringBuilder("[");
        for (int i = 0; i < traceback.size(); i++) {
            if (i > 0) lines.append(',');
            lines.append(json(traceback.get(i)));
        }
        lines.append(']');
        send(out, "{\"ev\":\"error\",\"ename\":" + json(ename) + ",\"evalue\":" + json(evalue)
                + ",\"traceback\":" + lines + "}");
    }

    // --- output -----------------------------------------------------------------------------

    static synchronized void send(PrintStream stream, String message) {
        stream.print(mark + message + "\n");
        stream.flush();
    }

    static String json(String text) {
        StringBuilder quoted = new StringBuilder(text.length() + 2).append('"');
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            switch (c) {
                case '"': quoted.append("\\\""); break;
                case '\\': quoted.append("\\\\"); break;
                case '\n': quoted.append("\\n"); break;
                case '\r': quoted.append("\\r"); break;
                case '\t': quoted.append("\\t"); break;
                default:
                    if (c < 0x20 || c == 0x2028 || c == 0x2029) {
                        quoted.append(String.format("\\u%04x", (int) c));
                    } else {
                        quoted.append(c);
                    }
            }
        }
        return quoted.append('"').toString();
    }

    // --- execution in this JVM ----------------------------------------------------------------

    static final class InProcess implements ExecutionControlProvider {
        public String name() {
            return "opensandbox-local";
        }

        public ExecutionControl generate(ExecutionEnv env, Map<String, String> parameters) {
            return new Control();
        }
    }

    static final class Control extends LocalExecutionControl {
        @Override
        public void stop() throws EngineTerminationException, InternalException {
            super.stop();
            // Threads the snippet runs on (and any it started): a sleep or wait ends too.
            for (Thread thread : Thread.getAllStackTraces().keySet()) {
                ThreadGroup group = thread.getThreadGroup();
                if (group != null && group != driverThreads && group.getParent() == driverThreads) {
                    thread.interrupt();
                }
            }
        }
    }
}
