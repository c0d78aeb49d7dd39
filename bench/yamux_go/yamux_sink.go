// The receiver of bench/bench_mux.py's protocol on hashicorp/yamux (Debian's
// golang-github-hashicorp-yamux-dev), so keywire's ~mux can be measured against another
// maintained yamux on the same link.
//
//	yamux_sink WINDOW [WINDOW...]   one TCP listener per MaxStreamWindowSize; prints {"WINDOW": port, ...}
//
// Each stream: "B" + u64 size + size bytes -> "ok" after the last byte; "R" + 63 bytes ->
// "A" + the 63 bytes; then FIN. It exits when stdin closes.
package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"

	"github.com/hashicorp/yamux"
)

func serveStream(s net.Conn) {
	defer s.Close()
	kind := make([]byte, 1)
	if _, err := io.ReadFull(s, kind); err != nil {
		return
	}
	if kind[0] == 'B' {
		head := make([]byte, 8)
		if _, err := io.ReadFull(s, head); err != nil {
			return
		}
		size := int64(binary.BigEndian.Uint64(head))
		if n, err := io.CopyN(io.Discard, s, size); err != nil || n != size {
			return
		}
		s.Write([]byte("ok"))
		return
	}
	request := make([]byte, 63)
	if _, err := io.ReadFull(s, request); err != nil {
		return
	}
	s.Write(append([]byte("A"), request...))
}

func serve(ln net.Listener, window uint32) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		cfg := yamux.DefaultConfig()
		cfg.LogOutput = io.Discard
		cfg.EnableKeepAlive = false
		cfg.MaxStreamWindowSize = window
		session, err := yamux.Server(conn, cfg)
		if err != nil {
			conn.Close()
			continue
		}
		go func() {
			for {
				stream, err := session.Accept()
				if err != nil {
					return
				}
				go serveStream(stream)
			}
		}()
	}
}

func main() {
	ports := map[string]int{}
	for _, arg := range os.Args[1:] {
		window, err := strconv.Atoi(arg)
		if err != nil {
			fmt.Fprintln(os.Stderr, "usage: yamux_sink WINDOW [WINDOW...]")
			os.Exit(2)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		ports[arg] = ln.Addr().(*net.TCPAddr).Port
		go serve(ln, uint32(window))
	}
	line, _ := json.Marshal(ports)
	fmt.Println(string(line))
	io.Copy(io.Discard, os.Stdin)
}
