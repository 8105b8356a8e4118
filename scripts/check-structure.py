#!/usr/bin/env python3
"""Checks the structure rules of issue 14 on the Rust sources of the repo.

Usage: scripts/check-structure.py [MAX_FN_LINES] (default 150), from the
repository root. Prints
- every function longer than MAX_FN_LINES lines (tests included), found by
  counting braces from each `fn` line (strings and `//` comments skipped);
- every import circle between files of one crate: a file's edges are the
  `crate::…`, `super::…` and `self::…` paths it names, resolved to the file
  that defines the longest matching module; circles are the strongly
  connected components of that graph with more than one file;
- every non-test source file over 1000 lines.
Exits 1 if it printed anything.
"""
import os
import re
import sys

LIMIT = int(sys.argv[1]) if len(sys.argv) > 1 else 150
problems = 0

pat=re.compile(r'^\s*(pub(\([^)]*\))?\s+)?(async\s+)?(unsafe\s+)?(const\s+)?(extern\s+"C"\s+)?fn\s+(\w+)')
res=[]
for root,dirs,files in os.walk('.'):
    if 'target' in root or '/.git' in root: continue
    for f in files:
        if not f.endswith('.rs'): continue
        p=os.path.join(root,f)
        lines=open(p,errors='replace').read().split('\n')
        i=0
        while i<len(lines):
            m=pat.match(lines[i])
            if m:
                # find first '{' or ';'
                j=i;depth=0;started=False
                while j<len(lines):
                    s=re.sub(r'"([^"\\]|\\.)*"','""',lines[j])
                    s=re.sub(r"'([^'\\]|\\.)'","''",s)
                    s=s.split('//')[0]
                    for ch in s:
                        if ch=='{': depth+=1;started=True
                        elif ch=='}': depth-=1
                        elif ch==';' and not started: break
                    else:
                        if started and depth==0: break
                        j+=1; continue
                    if not started: break
                    if depth==0: break
                    j+=1
                n=j-i+1
                if started and n>LIMIT: res.append((n,p,i+1,m.group(7)))
            i+=1
for r in sorted(res,reverse=True):
    print('long function:', *r)
    problems += 1

crates={'protocol':'protocol/src','engine':'engine/src','agent':'agent/src','benches':'benches/src','tests':'tests/src'}
def modpath(root,p):
    rel=os.path.relpath(p,root)[:-3].split('/')
    if rel[-1] in('mod','lib','main'): rel=rel[:-1]
    return tuple(rel)
allres=[]
for cr,root in crates.items():
    if not os.path.isdir(root): continue
    files={}
    for d,_,fs in os.walk(root):
        for f in fs:
            if f.endswith('.rs'): files[modpath(root,os.path.join(d,f))]=os.path.join(d,f)
    def resolve(path):
        for k in range(len(path),-1,-1):
            if tuple(path[:k]) in files: return tuple(path[:k])
    edges={}
    for m,p in files.items():
        if 'tests' in m[-1:] : continue
        src=open(p).read()
        # drop cfg(test) mod blocks crudely: cut at '#[cfg(test)]\nmod tests'
        i=src.find('#[cfg(test)]\nmod tests')
        if i>=0: src=src[:i]
        src=re.sub(r'//.*','',src)
        isdirmod=p.endswith(('mod.rs','lib.rs','main.rs'))
        base=m if isdirmod else m[:-1]
        tg=set()
        # expand use groups roughly: take crate::a::b and super::a
        for mm in re.finditer(r'\b(crate|super(?:::super)*)((?:::\w+)+)',src):
            head=mm.group(1); parts=[x for x in mm.group(2).split('::') if x]
            if head=='crate': path=parts
            else:
                ups=head.count('super')
                b=list(base)
                b=b[:len(b)-(ups-1)] if ups>1 else b
                path=list(b)+parts
            t=resolve(path)
            if t is not None and t!=m: tg.add(t)
        # 'self::x' in mod files
        for mm in re.finditer(r'\bself((?:::\w+)+)',src):
            parts=[x for x in mm.group(1).split('::') if x]
            t=resolve(list(base)+parts)
            if t is not None and t!=m: tg.add(t)
        edges[m]=tg
    # SCCs
    idx={};low={};st=[];on=set();out=[];c=[0]
    sys.setrecursionlimit(10000)
    def sc(v):
        idx[v]=low[v]=c[0];c[0]+=1;st.append(v);on.add(v)
        for w in edges.get(v,()):
            if w not in idx: sc(w);low[v]=min(low[v],low[w])
            elif w in on: low[v]=min(low[v],idx[w])
        if low[v]==idx[v]:
            comp=[]
            while True:
                w=st.pop();on.discard(w);comp.append(w)
                if w==v:break
            if len(comp)>1: out.append(comp)
    for v in edges:
        if v not in idx: sc(v)
    for comp in out:
        print('import circle in', cr, ['/'.join(x) or '<root>' for x in comp])
        problems += 1
        for a in comp:
            for b in edges[a]:
                if b in comp: print('   ','/'.join(a) or '<root>','->','/'.join(b) or '<root>')

for root, dirs, files in os.walk('.'):
    if 'target' in root or '/.git' in root or '/tests' in root or root.endswith('tests'):
        continue
    for f in files:
        if f.endswith('.rs') and f != 'tests.rs':
            p = os.path.join(root, f)
            n = sum(1 for _ in open(p, errors='replace'))
            if n > 1000:
                print('long file:', n, p)
                problems += 1
sys.exit(1 if problems else 0)
