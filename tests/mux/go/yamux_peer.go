// A plain yamux peer built on hashicorp/yamux (Debian's golang-github-hashicorp-yamux-dev), for
// keywire's ~mux interop tests.
//
//	yamux_peer server                 echo every stream (io.Copy, then Close = FIN); prints {"port": N}
//	yamux_peer client PORT N SIZE     open N streams, send SIZE bytes each, check the echo
//
// Every stdout line is one JSON object. Environment: KW_BACKLOG (accept backlog), KW_NO_ACCEPT=1
// (the server never accepts, so the backlog fills), KW_KEEPALIVE_MS (0: off), KW_WRITE_TIMEOUT_MS
// (how long a ping may go unanswered), KW_WINDOW (MaxStreamWindowSize).
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

var out sync.Mutex

func say(v map[string]interface{}) {
	out.Lock()
	defer out.Unlock()
	line, _ := json.Marshal(v)
	fmt.Println(string(line))
}

func envInt(name string, fallback int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return fallback
}

func config() *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	cfg.AcceptBacklog = envInt("KW_BACKLOG", 256)
	if ms := envInt("KW_KEEPALIVE_MS", 0); ms > 0 {
		cfg.KeepAliveInterval = time.Duration(ms) * time.Millisecond
	} else {
		cfg.EnableKeepAlive = false
	}
	if ms := envInt("KW_WRITE_TIMEOUT_MS", 0); ms > 0 {
		cfg.ConnectionWriteTimeout = time.Duration(ms) * time.Millisecond
	}
	cfg.MaxStreamWindowSize = uint32(envInt("KW_WINDOW", 256*1024))
	return cfg
}

// pattern is what stream id carries: the same formula as the Python side.
func pattern(id uint32, size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte((i*31 + int(id)*7) & 0xff)
	}
	return b
}

func serve(conn net.Conn) {
	session, err := yamux.Server(conn, config())
	if err != nil {
		say(map[string]interface{}{"event": "session-error", "error": err.Error()})
		return
	}
	if os.Getenv("KW_NO_ACCEPT") == "1" {
		<-session.CloseChan()
		say(map[string]interface{}{"event": "session-closed"})
		return
	}
	for {
		stream, err := session.AcceptStream()
		if err != nil {
			say(map[string]interface{}{"event": "session-closed", "error": err.Error()})
			return
		}
		go func(s *yamux.Stream) {
			n, err := io.Copy(s, s)
			if err != nil {
				say(map[string]interface{}{"event": "stream-error", "id": s.StreamID(),
					"error": err.Error(), "echoed": n})
				return
			}
			s.Close()
			say(map[string]interface{}{"event": "stream-done", "id": s.StreamID(), "echoed": n})
		}(stream)
	}
}

func runServer() {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	say(map[string]interface{}{"port": listener.Addr().(*net.TCPAddr).Port})
	go func() {
		io.Copy(io.Discard, os.Stdin) // the test closes stdin (or kills us) when done
		os.Exit(0)
	}()
	for {
		conn, err := listener.Accept()
		if err != nil {
			return
		}
		go serve(conn)
	}
}

func runClient(port string, count int, size int) {
	conn, err := net.Dial("tcp", "127.0.0.1:"+port)
	if err != nil {
		panic(err)
	}
	session, err := yamux.Client(conn, config())
	if err != nil {
		panic(err)
	}
	var wg sync.WaitGroup
	var lock sync.Mutex
	failed := 0
	for n := 0; n < count; n++ {
		stream, err := session.OpenStream()
		if err != nil {
			panic(err)
		}
		wg.Add(1)
		go func(s *yamux.Stream) {
			defer wg.Done()
			data := pattern(s.StreamID(), size)
			go s.Write(data)
			got := make([]byte, size)
			// hashicorp/yamux's Read returns EOF once we closed our side: read first, then Close
			_, err := io.ReadFull(s, got)
			s.Close()
			if err != nil || string(got) != string(data) {
				lock.Lock()
				failed++
				lock.Unlock()
				say(map[string]interface{}{"event": "mismatch", "id": s.StreamID(), "error": fmt.Sprint(err)})
			}
		}(stream)
	}
	wg.Wait()
	rtt, err := session.Ping()
	say(map[string]interface{}{"done": count, "failed": failed, "ping_ok": err == nil && rtt > 0})
	// Close alone sends no GoAway in this hashicorp/yamux version (the peer sees the pipe end)
	session.GoAway()
	session.Close()
}

func main() {
	if len(os.Args) >= 2 && os.Args[1] == "server" {
		runServer()
		return
	}
	if len(os.Args) == 5 && os.Args[1] == "client" {
		count, _ := strconv.Atoi(os.Args[3])
		size, _ := strconv.Atoi(os.Args[4])
		runClient(os.Args[2], count, size)
		return
	}
	fmt.Fprintln(os.Stderr, "usage: yamux_peer server | client PORT N SIZE")
	os.Exit(2)
}
